"""Two-hop queries built by chaining relations, for the paper's multi-hop correction (REFERENCE.md §2).

A relation A maps a subject s to an object o1 (``Visual Basic → Microsoft``, *product by company*); a relation
B maps o1 to o2 (``Microsoft → Satya Nadella``, *company CEO*). Where an object of A is a subject of B (matched
after normalisation: case, accents, punctuation and spacing do not count) and A's range is B's domain
(``company``), the two facts make a two-hop query with these prompts:

- **hop 1**: one of A's templates with s: ``"Visual Basic was created by"`` (answer o1); every one of A's
  ``prompt_templates`` is a candidate, and the experiment keeps the first under which the model names o1;
- **hop 2**: B's template with o1: ``"The CEO of Microsoft is"`` (answer o2);
- **description**: a noun phrase that names o1 through s and A (see :func:`describe`):
  ``"the company that Visual Basic was created by"``;
- **composed**: B's template with the description in place of o1:
  ``"The CEO of the company that Visual Basic was created by is"`` (answer o2);
- **chain of thought**: the composed prompt as a question followed by "Let's think step by step"
  (:data:`COT_TEMPLATE`).

The description is derived from A's templates by two rules, tried on each template in turn (the
``prompt_templates`` first, then ``prompt_templates_zs``):

1. A template that is a noun phrase followed by a copula (``is``, ``was``, ``are``, ``were``, optionally
   followed by ``the``/``a``/``an``/``named``/``called``) and that starts with ``The``/``the`` or with the
   subject's possessive: the noun phrase, e.g. ``"The capital city of {} is"`` → ``"the capital city of
   France"``, ``"{}'s father is named"`` → ``"Tom Hanks's father"``.
2. A template that starts with the subject: a relative clause on A's range name, with a trailing
   ``the <range name> of``/``named``/``called`` or article dropped, e.g. ``"{} was created by"`` →
   ``"the company that Visual Basic was created by"``, ``"{} is from the country of"`` → ``"the country that
   pizza is from"``.

B's template is the first of its ``prompt_templates`` where the subject does not open the sentence, else the
first possessive one turned around (``"{}'s father is named"`` → ``"The father of {} is named"``), else the
same among its ``prompt_templates_zs``. A query for which no template of A gives a description, and a chain
whose hop-2 relation has every template open with its subject, are skipped and counted. Callers may give their
own description templates per relation (``descriptions={"product by company": "the company that created {}"}``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from patchscopes.data.matching import normalize_text
from patchscopes.errors import PatchscopesError

COT_TEMPLATE = "Q: {composed} what?\nA: Let's think step by step."
"""The chain-of-thought baseline: ``{composed}`` is the composed prompt (zero-shot CoT, Kojima et al. 2022)."""

_COPULA = re.compile(r"^(?P<np>.*\{\}.*?)\s+(?:is|was|are|were)(?:\s+(?:the|a|an|named|called))?\s*$")
_POSSESSIVE_B = re.compile(r"^\{\}'s\s+(?P<noun>.+?)\s+(?P<rest>(?:is|was|are|were)\b.*)$")


# -- data: relations as the chaining needs them -------------------------------------------------------------
@dataclass(frozen=True)
class RelationFacts:
    """The parts of a relation file the chaining uses.

    Attributes:
        name: The relation's name (``"product by company"``).
        key: Its identifier (the file stem, ``"product_by_company"``).
        templates: Its ``prompt_templates`` (``{}`` marks the subject).
        zero_shot: Its ``prompt_templates_zs``.
        domain: The domain name (``"product"``); empty if the file has none.
        range: The range name (``"company"``); empty if the file has none.
        samples: ``(subject, object, aliases)`` triples (aliases: other accepted names of the object).
    """

    name: str
    key: str
    templates: tuple[str, ...]
    zero_shot: tuple[str, ...]
    domain: str
    range: str
    samples: tuple[tuple[str, str, tuple[str, ...]], ...]

    @property
    def all_templates(self) -> tuple[str, ...]:
        """``templates`` then ``zero_shot``."""
        return self.templates + tuple(t for t in self.zero_shot if t not in self.templates)

    @property
    def first_template(self) -> str:
        """The hop prompt's template: the first of ``templates`` (or of ``zero_shot`` if there is none)."""
        return (self.templates or self.zero_shot)[0]


def as_facts(relation: object) -> RelationFacts:
    """A :class:`RelationFacts` from a relation object or a dict in the evandez/relations schema."""
    if isinstance(relation, RelationFacts):
        return relation

    def get(key: str, default=None):
        if isinstance(relation, Mapping):
            return relation.get(key, default)
        return getattr(relation, key, default)

    name = get("name")
    if not isinstance(name, str) or not name:
        raise PatchscopesError(f"a relation has no name: {relation!r:.80}")
    main = [t for t in (get("prompt_templates") or []) if isinstance(t, str) and "{}" in t]
    zs = [t for t in (get("prompt_templates_zs") or []) if isinstance(t, str) and "{}" in t]
    if not main and not zs:
        raise PatchscopesError(f"the relation {name!r} has no prompt template with '{{}}'")
    props = get("properties") or {}
    if not isinstance(props, Mapping):
        props = {k: getattr(props, k, "") for k in ("domain_name", "range_name")}
    domain = get("domain_name") or props.get("domain_name") or ""
    range_ = get("range_name") or props.get("range_name") or ""
    samples = []
    for s in get("samples") or []:
        subject = s.get("subject") if isinstance(s, Mapping) else getattr(s, "subject", None)
        obj = s.get("object") if isinstance(s, Mapping) else getattr(s, "object", None)
        aliases = (s.get("aliases") if isinstance(s, Mapping) else getattr(s, "aliases", None)) or ()
        if isinstance(obj, list) and obj:  # the schema allows a list: the name, then aliases
            obj, aliases = obj[0], (*obj[1:], *aliases)
        if isinstance(subject, str) and isinstance(obj, str) and subject.strip() and obj.strip():
            aliases = tuple(a.strip() for a in aliases if isinstance(a, str) and a.strip())
            samples.append((subject.strip(), obj.strip(), aliases))
    key = get("key") or re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    return RelationFacts(name, str(key), tuple(dict.fromkeys(main)), tuple(dict.fromkeys(zs)), str(domain),
                         str(range_), tuple(samples))


# -- verbalisation ---------------------------------------------------------------------------------------------
def fill(template: str, subject: str) -> str:
    """The template with its (first) ``{}`` replaced by ``subject``."""
    return template.replace("{}", subject, 1)


def describe(template: str, subject: str, range_name: str) -> str | None:
    """A noun phrase for the object of ``template`` filled with ``subject``, or ``None`` where no rule fits.

    See the module's documentation for the two rules.

    Example:
        >>> describe("{} was created by", "Visual Basic", "company")
        'the company that Visual Basic was created by'
        >>> describe("The capital city of {} is", "France", "city")
        'the capital city of France'
    """
    template = " ".join(template.split())
    m = _COPULA.match(template)
    if m:
        np = m.group("np")
        if re.match(r"^[Tt]he\s", np):
            return fill(np[0].lower() + np[1:], subject)
        if re.match(r"^\{\}'s\s\S", np):
            return fill(np, subject)
    if template.startswith("{} ") and range_name:
        rest = template[3:]
        rest = re.sub(rf"\s+the\s+{re.escape(range_name)}(?:\s+(?:of|named|called))?\s*$", "", rest, flags=re.I)
        rest = re.sub(r"\s+(?:the|a|an|named|called)\s*$", "", rest, flags=re.I)
        if rest.strip():
            return f"the {range_name} that {subject} {rest.strip()}"
    return None


def hop2_template(templates: Sequence[str], zero_shot: Sequence[str] = ()) -> str | None:
    """B's template for the second hop and the composed prompt, or ``None``.

    The first template where the subject does not open the sentence, else the first possessive one turned
    around (``"{}'s CEO is"`` → ``"The CEO of {} is"``); ``templates`` are tried before ``zero_shot``.
    """
    for group in (templates, zero_shot):
        group = [" ".join(t.split()) for t in group]
        for template in group:
            if not template.startswith("{}"):
                return template
        for template in group:
            m = _POSSESSIVE_B.match(template)
            if m:
                return f"The {m.group('noun')} of {{}} {m.group('rest')}"
    return None


# -- queries --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TwoHopQuery:
    """One two-hop query: s →(A) o1 →(B) o2, with its prompts.

    Attributes:
        query_id: A stable id: the two relations' keys and a hash of (s, o1, o2), e.g.
            ``"product_by_company>company_ceo:cdd69dc0"``.
        relation1, relation2: The names of A and B.
        subject: s.
        bridge: o1 (as A spells it).
        answer: o2.
        bridge_aliases, answer_aliases: Other accepted names of o1 and o2 (from the relation files).
        hop1_prompt: A's first template with s (its answer is o1); after
            :func:`~patchscopes.experiments.multihop.filter_known`, the first under which the model names o1.
        hop1_prompts: Every one of A's ``prompt_templates`` with s, in order (the candidates for ``hop1_prompt``).
        hop2_prompt: B's template with o1 (its answer is o2).
        description: The noun phrase naming o1 through s.
        composed_prompt: B's template with the description in place of o1 (its answer is o2).
        hop2_prefix: The composed prompt's text before the description (B's template before ``{}``, stripped).
        hop2_suffix: The text after the description (B's template after ``{}``).
        cot_prompt: The chain-of-thought prompt.
    """

    query_id: str
    relation1: str
    relation2: str
    subject: str
    bridge: str
    answer: str
    bridge_aliases: tuple[str, ...]
    answer_aliases: tuple[str, ...]
    hop1_prompt: str
    hop1_prompts: tuple[str, ...]
    hop2_prompt: str
    description: str
    composed_prompt: str
    hop2_prefix: str
    hop2_suffix: str
    cot_prompt: str

    def to_record(self) -> dict:
        """A flat dict of the query's fields."""
        return asdict(self)


@dataclass
class ChainReport:
    """What :func:`build_queries` found: the queries, and counts of what it skipped.

    Attributes:
        queries: The two-hop queries, in a stable order.
        chains: ``(A, B, n)`` for each relation pair that yields n queries.
        skipped: Counts of skipped chains and facts by reason.
    """

    queries: list[TwoHopQuery]
    chains: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def build_queries(
    relations: Iterable[object],
    *,
    match_types: bool = True,
    descriptions: Mapping[str, str] | None = None,
    cot_template: str = COT_TEMPLATE,
    max_per_chain: int | None = None,
    seed: int = 0,
) -> ChainReport:
    """All two-hop queries of relations A → B where an object of A is a subject of B.

    Args:
        relations: Relations (objects or dicts in the evandez/relations schema, or :class:`RelationFacts`).
        match_types: Chain A → B only where A's range name equals B's domain name (``company`` → ``company``);
            without it, any shared entity chains (``orange`` the colour → Orange the company).
        descriptions: Description templates by relation name or key (``{}`` = s), used instead of the rules of
            :func:`describe`.
        cot_template: The chain-of-thought prompt, with ``{composed}``.
        max_per_chain: Keep at most this many queries of each relation pair (a seeded random sample).
        seed: Seed of that sample.

    Returns:
        A :class:`ChainReport`. A relation is never chained with itself; a query whose s, o1 and o2 are not
        three different entities is skipped (``"repeated entity"``), as is a duplicate.

    Raises:
        PatchscopesError: A relation has no name or no template, two relations share a name, or the CoT
            template has no ``{composed}``.
    """
    if "{composed}" not in cot_template:
        raise PatchscopesError(f"the chain-of-thought template {cot_template!r} has no {{composed}}")
    facts = [as_facts(r) for r in relations]
    names = [f.name for f in facts]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise PatchscopesError(f"two relations share the name {dup[0]!r}", hint="give each relation file once")
    descriptions = dict(descriptions or {})
    for name, template in descriptions.items():
        if "{}" not in template:
            raise PatchscopesError(f"the description template for {name!r} has no '{{}}': {template!r}")
    skipped: dict[str, int] = {}

    def skip(reason: str, n: int = 1) -> None:
        skipped[reason] = skipped.get(reason, 0) + n

    by_subject: list[dict[str, list[tuple[str, str, tuple[str, ...]]]]] = []
    for f in facts:
        index: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
        for sample in f.samples:
            index.setdefault(normalize_text(sample[0]), []).append(sample)
        by_subject.append(index)

    queries: list[TwoHopQuery] = []
    chains: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str, str, str, str]] = set()
    for a, fa in enumerate(facts):
        for b, fb in enumerate(facts):
            if a == b:
                continue
            links = []
            for s, o1, aliases1 in fa.samples:
                found = {id(p): p for name in (o1, *aliases1) for p in by_subject[b].get(normalize_text(name), [])}
                links += [(s, o1, aliases1, pair) for pair in found.values()]
            if not links:
                continue
            if match_types and normalize_text(fa.range) != normalize_text(fb.domain):
                skip("chain: range of hop 1 is not the domain of hop 2")
                continue
            b_template = hop2_template(fb.templates, fb.zero_shot)
            if b_template is None:
                skip("chain: every template of hop 2 opens with its subject")
                continue
            prefix, _, suffix = b_template.partition("{}")
            chain_queries = []
            for s, o1, aliases1, (_, o2, aliases2) in links:
                key = (fa.key, fb.key, normalize_text(s), normalize_text(o1), normalize_text(o2))
                if key in seen:
                    skip("query: duplicate")
                    continue
                seen.add(key)
                if len({key[2], key[3], key[4]}) < 3:
                    skip("query: repeated entity")
                    continue
                own = descriptions.get(fa.name, descriptions.get(fa.key))
                if own is not None:
                    desc = fill(own, s)
                else:
                    desc = next((d for t in fa.all_templates if (d := describe(t, s, fa.range)) is not None), None)
                if desc is None:
                    skip("query: no description of hop 1's object")
                    continue
                composed = prefix + desc + suffix
                digest = hashlib.sha1("\x1f".join(key).encode()).hexdigest()[:8]
                chain_queries.append(TwoHopQuery(
                    query_id=f"{fa.key}>{fb.key}:{digest}",
                    relation1=fa.name, relation2=fb.name, subject=s, bridge=o1, answer=o2,
                    bridge_aliases=aliases1, answer_aliases=aliases2,
                    hop1_prompt=fill(fa.first_template, s),
                    hop1_prompts=tuple(dict.fromkeys(fill(t, s) for t in (fa.templates or fa.zero_shot))),
                    hop2_prompt=fill(b_template, o1), description=desc, composed_prompt=composed,
                    hop2_prefix=prefix.rstrip(), hop2_suffix=suffix,
                    cot_prompt=cot_template.replace("{composed}", composed),
                ))
            if max_per_chain is not None and len(chain_queries) > max_per_chain:
                g = torch.Generator().manual_seed(seed)
                keep = sorted(torch.randperm(len(chain_queries), generator=g)[:max_per_chain].tolist())
                skip("query: over --max-per-chain", len(chain_queries) - len(keep))
                chain_queries = [chain_queries[i] for i in keep]
            if chain_queries:
                chains.append((fa.name, fb.name, len(chain_queries)))
                queries.extend(chain_queries)
    return ChainReport(queries, chains, skipped)


def split_queries(queries: Sequence[TwoHopQuery], dev_fraction: float = 0.5, seed: int = 0
                  ) -> tuple[list[TwoHopQuery], list[TwoHopQuery]]:
    """A seeded split into a development part and a held-out test part that never overlap.

    Args:
        queries: The queries.
        dev_fraction: The share in the development part (rounded; each part gets at least one query when
            there are two or more).
        seed: Seed of the shuffle.

    Raises:
        PatchscopesError: ``dev_fraction`` is not strictly between 0 and 1.
    """
    if not 0 < dev_fraction < 1:
        raise PatchscopesError(f"the development fraction must be between 0 and 1, got {dev_fraction}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(queries), generator=g).tolist()
    n_dev = round(len(queries) * dev_fraction)
    if len(queries) >= 2:
        n_dev = min(max(n_dev, 1), len(queries) - 1)
    dev = [queries[i] for i in sorted(order[:n_dev])]
    test = [queries[i] for i in sorted(order[n_dev:])]
    return dev, test
