"""Relation data for attribute extraction: loaders, source contexts, subject positions and fact checks.

Two file formats are read:

- **Relation JSON** in the schema of Hernandez et al. (2023, ``evandez/relations``)::

      {"name": "country capital city",
       "prompt_templates": ["The capital city of {} is", ...], "prompt_templates_zs": [...],
       "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city", ...},
       "samples": [{"subject": "France", "object": "Paris"}, ...]}

  ``{}`` in a template marks the subject. A sample may also give ``"aliases": [...]`` (other names of the
  object counted as correct), or its ``"object"`` as a list (the first is the name, the rest aliases).
- **The Patchscopes paper's preprocessed TSVs** (``patchscopes_preprocessed/``): one row per source window,
  with the columns ``subject, object, prompt_target`` and, where the paper found one, ``prompt_source`` (a
  WikiText window that contains the subject) and ``source_cropped_toks`` (the window cut after the subject in
  GPT-J's tokens, used here only to tell which occurrence of the subject was meant).

A relation's **target prompt** ends in (or contains) the placeholder ``x``: the paper's prompt for its 22
relations (:data:`PAPER_TARGET_PROMPTS`), the TSV's ``prompt_target``, one given by the user, or else one
derived from the first template (``"The capital city of {} is"`` → ``"The capital city of x is"``). Its
**verbalization** for a subject puts the subject in place of ``x`` (``"The capital city of France is"``):
the prompt of the "knows the fact" check (:func:`knows_fact`).

**Source contexts** of a subject come from the first of these that has any: the TSV's WikiText windows, windows
of a user's text corpus that contain the subject (:func:`corpus_windows`), or the relation's own templates
with the subject filled in. The source position is the subject's last token, found again in each context
with the model's own tokenizer (:func:`locate_subject`); the paper's GPT-J positions are never reused.

**"The object appears"** (:func:`mentions`): both texts are normalised (Unicode NFKD with accents removed,
case-folded, apostrophes dropped, other punctuation, hyphens, underscores and runs of whitespace turned into
one space); the object must then occur as whole words, optionally followed by a plural ``s``/``es``
(``"dollar"`` matches ``"US dollars"``, ``"red"`` does not match ``"hundred"``). Any alias matching counts.
"""

from __future__ import annotations

import ast
import bisect
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from patchscopes.data.tokens import Tokenizes
from patchscopes.errors import PatchscopesError

PLACEHOLDER = "x"

PAPER_TARGET_PROMPTS: dict[str, str] = {
    "fruit_inside_color": "On the inside, the color of x",
    "fruit_outside_color": "On the outside, the color of x",
    "object_superclass": "Among the superclasses of animal, bird, fish, vegetable, flower, fruit, the superclass of x",
    "substance_phase": "At room temperature, the phase of matter of x",
    "task_done_by_person": "The professional role most suited to handle x",
    "task_done_by_tool": "The tool that is used for x",
    "word_sentiment": "Among positive, negative, neutral, the sentiment of x",
    "work_location": "The place of work where you can usually find a x",
    "company_ceo": "The name of the CEO of x",
    "country_capital_city": "The capital city of x",
    "country_currency": "The official currency of x",
    "country_largest_city": "The largest city in x",
    "food_from_country": "The country of origin for x",
    "person_father": "Name of father of x",
    "person_mother": "Name of mother of x",
    "person_plays_position_in_sport": "In their sport, the position played by x",
    "person_plays_pro_sport": "The professional sport played by x",
    "pokemon_evolutions": "The evolved form of x",
    "product_by_company": "The company which developed x",
    "star_constellation": "The name of the constellation including x",
    "superhero_archnemesis": "The name of the superhero archnemesis of x",
    "superhero_person": "Secret identity of x",
}
"""The paper's 22 target prompts (the ``prompt_target`` column of its preprocessed data), by relation key."""

# Names in the relation JSON files whose key (file stem) is not simply the name with underscores.
_NAME_KEYS = {
    "substance phase of matter": "substance_phase",
    "task person type": "task_done_by_person",
    "person sport position": "person_plays_position_in_sport",
    "plays pro sport": "person_plays_pro_sport",
    "pokemon evolution": "pokemon_evolutions",
    "star constellation name": "star_constellation",
}

CONTEXT_KINDS = ("wikitext", "corpus", "template")
"""Where source contexts come from, in the default order of preference."""

_SCHEMA_HINT = ('a relation JSON needs {"name", "prompt_templates": ["... {} ..."], "samples": '
                '[{"subject": ..., "object": ...}]} (the evandez/relations schema); a TSV needs the columns '
                "subject, object, prompt_target (the Patchscopes preprocessed data)")


@dataclass(frozen=True)
class RelationSample:
    """A (subject, object) pair of a relation, with other accepted names of the object."""

    subject: str
    object: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceContext:
    """A text in which a subject occurs.

    Attributes:
        text: The context.
        kind: ``"wikitext"`` (the paper's windows), ``"corpus"`` (a user's text) or ``"template"``.
        subject_end: The character offset just after the occurrence of the subject that is meant, where it is
            known; otherwise the first occurrence is used.
    """

    text: str
    kind: str
    subject_end: int | None = None


@dataclass
class Relation:
    """A relation: its (subject, object) samples, templates and, where known, target prompt and windows.

    Attributes:
        name: A readable name (``"country capital city"``).
        key: An identifier (the file stem, ``"country_capital_city"``); matches the paper's data.
        samples: Distinct (subject, object) pairs, in file order.
        prompt_templates: Templates with ``{}`` for the subject (JSON files).
        prompt_templates_zs: The zero-shot templates of the JSON schema (kept, unused).
        properties: The JSON's ``properties`` (relation type, domain and range names...).
        target_prompt: The target prompt with the placeholder ``x`` (from the file or the paper), if any.
        windows: WikiText windows per subject (from a preprocessed TSV).
        path: The file it was read from.
    """

    name: str
    key: str
    samples: list[RelationSample]
    prompt_templates: list[str] = field(default_factory=list)
    prompt_templates_zs: list[str] = field(default_factory=list)
    properties: dict = field(default_factory=dict)
    target_prompt: str | None = None
    windows: dict[str, list[SourceContext]] = field(default_factory=dict)
    path: Path | None = None

    def resolved_target_prompt(self) -> str:
        """The target prompt: the relation's own (file or paper), or one derived from its first template."""
        if self.target_prompt is not None:
            return self.target_prompt
        return derive_target_prompt(self.prompt_templates, what=f"relation {self.name!r}")

    def verbalize(self, subject: str, target_prompt: str | None = None) -> str:
        """The target prompt with ``subject`` in place of the placeholder (the "knows the fact" prompt)."""
        return verbalize(target_prompt or self.resolved_target_prompt(), subject)


@dataclass(frozen=True)
class AttributeSample:
    """One sample of the experiment: a (subject, object) pair in one source context, located for a model.

    Attributes:
        subject, object, aliases: The fact.
        text: The source prompt S.
        position: i, the index of the subject's last token in the model's tokens of ``text``.
        token: That token, decoded.
        kind: Where the context came from (see :data:`CONTEXT_KINDS`).
    """

    subject: str
    object: str
    aliases: tuple[str, ...]
    text: str
    position: int
    token: str
    kind: str


@dataclass(frozen=True)
class FactCheck:
    """The outcome of :func:`knows_fact` for one prompt."""

    prompt: str
    object: str
    generated_text: str
    known: bool


# -- text matching -----------------------------------------------------------------------------------------
def unescape(text: str) -> str:
    r"""Decode literal ``\uXXXX`` escapes left in some files (``"Bras\u00edlia"`` → ``"Brasília"``)."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


# Latin letters that Unicode decomposition leaves whole (a stroke or a ligature, not a combining accent).
_UNDECOMPOSED = str.maketrans({
    "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ħ": "h", "Ħ": "H",
    "ı": "i", "ŧ": "t", "Ŧ": "T", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "þ": "th", "Þ": "TH",
})


def normalize_text(text: str) -> str:
    """Text as compared by :func:`mentions`: accents removed, case-folded, punctuation and spaces collapsed.

    Example:
        >>> normalize_text("  Bogotá,  D.C.  ")
        'bogota d c'
        >>> normalize_text("Polish złoty, Søren")
        'polish zloty soren'
    """
    text = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSED))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"['\u2019\u2018`]", "", text)
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch == "_" else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def mentions(text: str | None, obj: str, aliases: Iterable[str] = ()) -> bool:
    """Whether ``text`` names ``obj`` (or an alias) under the normalisation of :func:`normalize_text`.

    The object must occur as whole words, optionally with a plural ``s``/``es``.

    Example:
        >>> mentions(" is the US Dollar.", "dollar"), mentions("one hundred", "red")
        (True, False)
    """
    if not text:
        return False
    haystack = normalize_text(text)
    for name in (obj, *aliases):
        needle = normalize_text(name) if name else ""
        if not needle:
            continue
        if re.search(r"(?<!\w)" + re.escape(needle) + r"(?:e?s)?(?!\w)", haystack):
            return True
    return False


# -- target prompts ----------------------------------------------------------------------------------------
def _placeholder_matches(prompt: str, placeholder: str = PLACEHOLDER) -> list[re.Match]:
    return list(re.finditer(r"(?<!\w)" + re.escape(placeholder) + r"(?!\w)", prompt))


def check_target_prompt(prompt: str, placeholder: str = PLACEHOLDER) -> str:
    """Check that ``prompt`` has exactly one whole-word placeholder; return it unchanged.

    Raises:
        PatchscopesError: No placeholder, or several.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PatchscopesError("the target prompt is empty", hint=f"give a prompt with the placeholder {placeholder!r}")
    found = len(_placeholder_matches(prompt, placeholder))
    if found != 1:
        what = "no" if not found else f"{found} whole-word"
        raise PatchscopesError(
            f"the target prompt {prompt!r} has {what} placeholder {placeholder!r}",
            hint=f"use exactly one {placeholder!r} as a word where the subject goes, e.g. 'The capital city of x'",
        )
    return prompt


def derive_target_prompt(templates: Sequence[str], *, what: str = "the relation") -> str:
    """A target prompt from a relation's templates: the first usable one with ``{}`` replaced by ``x``.

    Raises:
        PatchscopesError: No template with exactly one ``{}`` that gives a prompt with one placeholder.
    """
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            continue
        if _placeholder_matches(template):
            continue  # the word x already occurs: the placeholder would be ambiguous
        return template.replace("{}", PLACEHOLDER)
    raise PatchscopesError(
        f"cannot derive a target prompt for {what}: no template with exactly one '{{}}'",
        hint="give a target prompt ending in the placeholder x (--target-prompt 'NAME=The capital city of x')",
    )


def verbalize(target_prompt: str, subject: str, placeholder: str = PLACEHOLDER) -> str:
    """``target_prompt`` with its (last whole-word) placeholder replaced by ``subject``.

    Example:
        >>> verbalize("The capital city of x", "France")
        'The capital city of France'
    """
    matches = _placeholder_matches(target_prompt, placeholder)
    if not matches:
        raise PatchscopesError(f"the target prompt {target_prompt!r} has no placeholder {placeholder!r}")
    m = matches[-1]
    return target_prompt[: m.start()] + subject + target_prompt[m.end():]


def relation_key(name: str) -> str:
    """The key of a relation name: the paper's file stem where known, else the name in snake case."""
    name = name.strip()
    if name in _NAME_KEYS:
        return _NAME_KEYS[name]
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "relation"


# -- loading -----------------------------------------------------------------------------------------------
def _schema_error(path: Path, problem: str) -> PatchscopesError:
    return PatchscopesError(f"{path}: not a relation file: {problem}", hint=_SCHEMA_HINT)


def _text_list(value, path: Path, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _schema_error(path, f"{what} must be a list of strings")
    return [unescape(v) for v in value]


def load_relation_json(path: str | Path) -> Relation:
    """Read a relation file in the ``evandez/relations`` schema.

    Raises:
        PatchscopesError: The file is missing, not JSON, or not in the schema (no samples, a sample without a
            subject or object, a template without ``{}``).
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or "samples" not in data:
        raise _schema_error(path, "no 'samples' list")
    if not isinstance(data["samples"], list) or not data["samples"]:
        raise _schema_error(path, "'samples' must be a non-empty list")
    templates = _text_list(data.get("prompt_templates"), path, "'prompt_templates'")
    for template in templates:
        if "{}" not in template:
            raise _schema_error(path, f"the template {template!r} has no '{{}}' for the subject")
    samples: list[RelationSample] = []
    seen: set[tuple[str, str]] = set()
    for k, item in enumerate(data["samples"]):
        if not isinstance(item, dict) or "subject" not in item or "object" not in item:
            raise _schema_error(path, f"sample {k} is not an object with 'subject' and 'object'")
        subject, obj = item["subject"], item["object"]
        aliases = _text_list(item.get("aliases"), path, f"sample {k}'s 'aliases'")
        if isinstance(obj, list):
            names = _text_list(obj, path, f"sample {k}'s 'object'")
            if not names:
                raise _schema_error(path, f"sample {k} has an empty 'object' list")
            obj, aliases = names[0], names[1:] + aliases
        if not isinstance(subject, str) or not isinstance(obj, str) or not subject.strip() or not obj.strip():
            raise _schema_error(path, f"sample {k}'s subject and object must be non-empty strings")
        subject, obj = unescape(subject).strip(), unescape(obj).strip()
        if (subject, obj) not in seen:
            seen.add((subject, obj))
            samples.append(RelationSample(subject, obj, tuple(aliases)))
    name = data.get("name") if isinstance(data.get("name"), str) and data.get("name").strip() else path.stem
    properties = data.get("properties") if isinstance(data.get("properties"), dict) else {}
    key = path.stem if path.stem in PAPER_TARGET_PROMPTS else relation_key(name)
    if key not in PAPER_TARGET_PROMPTS and relation_key(name) in PAPER_TARGET_PROMPTS:
        key = relation_key(name)
    return Relation(
        name=name.strip(), key=key, samples=samples, prompt_templates=templates,
        prompt_templates_zs=_text_list(data.get("prompt_templates_zs"), path, "'prompt_templates_zs'"),
        properties=properties, target_prompt=PAPER_TARGET_PROMPTS.get(key), path=path,
    )


def _read_json(path: Path):
    if not path.is_file():
        raise PatchscopesError(f"no such relation file: {path}", hint="give relation .json or .tsv files or folders")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise _schema_error(path, f"not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise _schema_error(path, f"invalid JSON at line {err.lineno}: {err.msg}") from err


def _cropped_end(value) -> int | None:
    """The length of the text the paper's ``source_cropped_toks`` spell (the subject ends there)."""
    if not isinstance(value, str) or not value.startswith("["):
        return None
    try:
        tokens = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None
    return len("".join(tokens))


def load_relation_tsv(path: str | Path) -> Relation:
    """Read one of the Patchscopes paper's preprocessed TSVs (one row per WikiText window).

    Rows whose window is missing keep their (subject, object) pair, without a window.

    Raises:
        PatchscopesError: The file is missing, unreadable, or lacks the columns subject, object, prompt_target.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise PatchscopesError(f"no such relation file: {path}", hint="give relation .json or .tsv files or folders")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise _schema_error(path, f"cannot read it as a TSV ({type(err).__name__}: {err})") from err
    missing = [c for c in ("subject", "object", "prompt_target") if c not in frame.columns]
    if missing:
        raise _schema_error(path, f"missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise _schema_error(path, "no rows")
    prompts = frame["prompt_target"].dropna().unique()
    if len(prompts) != 1:
        raise _schema_error(path, f"expected one prompt_target, found {len(prompts)}")
    target_prompt = check_target_prompt(unescape(str(prompts[0])))
    samples: list[RelationSample] = []
    seen: set[tuple[str, str]] = set()
    windows: dict[str, list[SourceContext]] = {}
    for row in frame.itertuples(index=False):
        subject, obj = row.subject, row.object
        if not isinstance(subject, str) or not isinstance(obj, str) or not subject.strip() or not obj.strip():
            continue
        subject, obj = unescape(subject).strip(), unescape(obj).strip()
        aliases: tuple[str, ...] = ()
        raw_aliases = getattr(row, "aliases", None)
        if isinstance(raw_aliases, str) and raw_aliases.strip():
            try:
                parsed = json.loads(raw_aliases)
            except json.JSONDecodeError:
                parsed = raw_aliases.split("|")
            aliases = tuple(unescape(a).strip() for a in parsed if isinstance(a, str) and a.strip())
        if (subject, obj) not in seen:
            seen.add((subject, obj))
            samples.append(RelationSample(subject, obj, aliases))
        text = getattr(row, "prompt_source", None)
        if isinstance(text, str) and text.strip():
            context = SourceContext(text, "wikitext", _cropped_end(getattr(row, "source_cropped_toks", None)))
            bucket = windows.setdefault(subject, [])
            if all(c.text != text for c in bucket):
                bucket.append(context)
    if not samples:
        raise _schema_error(path, "no row has a subject and an object")
    return Relation(name=path.stem.replace("_", " "), key=path.stem, samples=samples, target_prompt=target_prompt,
                    windows=windows, path=path)


def load_relation(path: str | Path) -> Relation:
    """Read a relation from a ``.json`` (relations schema) or ``.tsv`` (paper's preprocessed data) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_relation_json(path)
    if suffix in (".tsv", ".tab"):
        return load_relation_tsv(path)
    if not path.exists():
        raise PatchscopesError(f"no such relation file: {path}", hint="give relation .json or .tsv files or folders")
    raise PatchscopesError(f"{path}: unknown relation file type {path.suffix!r}",
                           hint="give .json files (relations schema) or .tsv files (the paper's preprocessed data)")


def relation_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively for ``.json`` and ``.tsv``) into relation files.

    Raises:
        PatchscopesError: A path does not exist, or a folder holds no relation file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".tsv"))
            if not found:
                raise PatchscopesError(f"no .json or .tsv relation files in the folder {path}")
        elif path.exists():
            found = [path]
        else:
            raise PatchscopesError(f"no such relation file or folder: {path}",
                                   hint="give relation .json or .tsv files, or folders of them")
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(p)
    if not out:
        raise PatchscopesError("no relation files given", hint="give relation .json or .tsv files or folders")
    return out


def load_relations(paths: str | Path | Sequence[str | Path]) -> list[Relation]:
    """Read every relation file of ``paths`` (files or folders).

    Raises:
        PatchscopesError: A missing or malformed file, or two files of the same relation.
    """
    relations = [load_relation(p) for p in relation_files(paths)]
    by_key: dict[str, Relation] = {}
    for relation in relations:
        if relation.key in by_key:
            raise PatchscopesError(
                f"two files of the relation {relation.key!r}: {by_key[relation.key].path} and {relation.path}",
                hint="give each relation once (the paper's windows of a JSON relation go in --windows)",
            )
        by_key[relation.key] = relation
    return relations


def attach_windows(relations: Sequence[Relation], paths: str | Path | Sequence[str | Path]) -> int:
    """Give relations without windows the WikiText windows of the paper's TSV of the same key (in place).

    A relation without a target prompt of its own also takes the TSV's ``prompt_target``.

    Returns:
        The number of relations that got windows.
    """
    files = [p for p in relation_files(paths) if p.suffix.lower() == ".tsv"]
    by_key = {p.stem: p for p in files}
    attached = 0
    for relation in relations:
        if relation.windows or relation.key not in by_key:
            continue
        source = load_relation_tsv(by_key[relation.key])
        subjects = {s.subject for s in relation.samples}
        relation.windows = {s: w for s, w in source.windows.items() if s in subjects}
        if relation.target_prompt is None:
            relation.target_prompt = source.target_prompt
        attached += bool(relation.windows)
    return attached


# -- source contexts and positions -------------------------------------------------------------------------
def _occurrences(text: str, subject: str) -> list[tuple[int, int]]:
    left = r"(?<!\w)" if subject[:1].isalnum() else ""
    right = r"(?!\w)" if subject[-1:].isalnum() else ""
    for pattern, flags in ((left + re.escape(subject) + right, 0), (left + re.escape(subject) + right, re.I)):
        spans = [m.span() for m in re.finditer(pattern, text, flags)]
        if spans:
            return spans
    return []


def locate_subject(
    model: Tokenizes, text: str, subject: str, subject_end: int | None = None
) -> tuple[list[int], int] | None:
    """The model's tokens of ``text`` and the index of the subject's last token, or ``None`` if absent.

    The subject is searched as whole words (case-sensitive, then not: ``"Japan"`` is not found in
    ``"Japanese"``); with several occurrences the one ending nearest ``subject_end`` is taken, else the first.
    """
    if not subject:
        return None
    spans = _occurrences(text, subject)
    if not spans:
        return None
    if subject_end is not None:
        _, end = min(spans, key=lambda s: (abs(s[1] - subject_end), s[0]))
    else:
        _, end = spans[0]
    ids = model.encode(text)
    if not ids:
        return None
    return ids, model.token_at_char(text, ids, end - 1)


def corpus_windows(
    model: Tokenizes,
    documents: Sequence[str] | Sequence[object],
    subjects: Iterable[str],
    *,
    per_subject: int = 5,
    window_tokens: int = 20,
) -> dict[str, list[SourceContext]]:
    """Windows of about ``window_tokens`` tokens of ``documents`` that contain each subject.

    A window ends a quarter of its length after the subject (a causal model's state at the subject does not
    depend on later tokens), and its start is found with the model's tokenizer. Occurrences are whole-word,
    case-sensitive matches, taken in corpus order, at most ``per_subject`` per subject.

    Args:
        model: Its tokenizer cuts the windows.
        documents: Texts, or objects with a ``text`` attribute (:class:`~patchscopes.data.text.Document`).
        subjects: The subjects to look for.
        per_subject: The most windows per subject.
        window_tokens: The length of a window in tokens.

    Returns:
        The windows of each subject found at least once.
    """
    if window_tokens < 2:
        raise PatchscopesError(f"window_tokens must be at least 2, got {window_tokens}")
    texts = [d if isinstance(d, str) else d.text for d in documents]  # type: ignore[attr-defined]
    joined = "\n\n".join(texts)
    starts = []
    offset = 0
    for t in texts:
        starts.append(offset)
        offset += len(t) + 2
    out: dict[str, list[SourceContext]] = {}
    for subject in dict.fromkeys(subjects):
        if not subject:
            continue
        left = r"(?<!\w)" if subject[:1].isalnum() else ""
        right = r"(?!\w)" if subject[-1:].isalnum() else ""
        found: list[SourceContext] = []
        for m in re.finditer(left + re.escape(subject) + right, joined):
            doc = bisect.bisect_right(starts, m.start()) - 1
            doc_start = starts[doc]
            if m.end() > doc_start + len(texts[doc]):
                continue
            window = _window(model, texts[doc], m.start() - doc_start, m.end() - doc_start, window_tokens)
            if window is not None and all(w.text != window.text for w in found):
                found.append(window)
            if len(found) >= per_subject:
                break
        if found:
            out[subject] = found
    return out


def _window(model: Tokenizes, text: str, start: int, end: int, window_tokens: int) -> SourceContext | None:
    lo = max(0, start - 12 * window_tokens)
    hi = min(len(text), end + 12 * window_tokens)
    chunk = text[lo:hi]
    s, e = start - lo, end - lo
    try:
        enc = model.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = []
    if offsets:
        covering = [k for k, (a, b) in enumerate(offsets) if a < e and b > s]
        if not covering:
            return None
        first, last = covering[0], covering[-1]
        tail = window_tokens // 4
        lo_tok = min(first, max(0, last + 1 + tail - window_tokens))
        hi_tok = max(last + 1, min(len(offsets), lo_tok + window_tokens))
        a, b = offsets[lo_tok][0], offsets[hi_tok - 1][1]
    else:  # no offsets: whole words around the subject (about two tokens a word)
        before = [m.start() for m in re.finditer(r"\S+", chunk[:s])]
        after = [m.end() for m in re.finditer(r"\S+", chunk[e:])]
        n_before, n_after = max(1, 3 * window_tokens // 8), max(1, window_tokens // 8)
        a = before[-n_before] if len(before) >= n_before else (before[0] if before else s)
        b = e + (after[n_after - 1] if len(after) >= n_after else (after[-1] if after else 0))
    piece = chunk[a:b]
    if not piece.strip():
        return None
    return SourceContext(piece, "corpus", e - a)


def template_contexts(relation: Relation, subject: str) -> list[SourceContext]:
    """The relation's templates with the subject filled in (or, without templates, its verbalization)."""
    texts = [t.replace("{}", subject, 1) for t in relation.prompt_templates if "{}" in t]
    if not texts:
        texts = [relation.verbalize(subject)]
    return [SourceContext(t, "template", None) for t in dict.fromkeys(texts)]


def subject_contexts(
    relation: Relation,
    *,
    corpus: dict[str, list[SourceContext]] | None = None,
    kinds: Sequence[str] = CONTEXT_KINDS,
    per_subject: int = 5,
) -> dict[str, list[SourceContext]]:
    """The source contexts of each subject: those of the first kind in ``kinds`` that has any.

    Args:
        relation: The relation.
        corpus: Corpus windows per subject (from :func:`corpus_windows`).
        kinds: Allowed kinds in order of preference: ``wikitext``, ``corpus``, ``template``.
        per_subject: The most contexts per subject.
    """
    unknown = [k for k in kinds if k not in CONTEXT_KINDS]
    if unknown or not kinds:
        raise PatchscopesError(f"unknown context kind(s) {', '.join(unknown) or '(none given)'}",
                               hint=f"use some of {', '.join(CONTEXT_KINDS)}")
    if per_subject < 1:
        raise PatchscopesError(f"per_subject must be at least 1, got {per_subject}")
    out: dict[str, list[SourceContext]] = {}
    for subject in dict.fromkeys(s.subject for s in relation.samples):
        for kind in kinds:
            if kind == "wikitext":
                found = relation.windows.get(subject, [])
            elif kind == "corpus":
                found = (corpus or {}).get(subject, [])
            else:
                found = template_contexts(relation, subject)
            if found:
                out[subject] = list(found[:per_subject])
                break
    return out


def locate_samples(
    model: Tokenizes, relation: Relation, contexts: dict[str, list[SourceContext]]
) -> tuple[list[AttributeSample], int]:
    """One :class:`AttributeSample` per (pair, context) whose subject is found in the context.

    Returns:
        The samples, and how many contexts were dropped because the subject does not occur in them.
    """
    samples: list[AttributeSample] = []
    dropped = 0
    for pair in relation.samples:
        for context in contexts.get(pair.subject, []):
            found = locate_subject(model, context.text, pair.subject, context.subject_end)
            if found is None:
                dropped += 1
                continue
            ids, position = found
            token = model.token_strings([ids[position]])[0]
            samples.append(AttributeSample(pair.subject, pair.object, pair.aliases, context.text, position, token,
                                           context.kind))
    return samples, dropped
