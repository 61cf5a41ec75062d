"""Entity files for the entity-description experiment (paper, Exp. 3): names, reference descriptions, popularity.

:func:`read_entities` reads a file of any of these shapes, recognised from its fields (columns or JSON keys):

- **PopQA** rows (TSV, CSV, JSON list or JSON lines) with a ``subj`` column: the entity is ``subj``, its
  popularity ``s_pop`` (monthly Wikipedia page views). PopQA has no description column, so these entities
  have no reference, unless the file adds a ``reference`` or ``description`` column.
- **PopQA questions** without a subject column, such as ``{"dev": [...], "test": [...]}`` of records
  ``{input, output, id, s_pop, o_pop}``: the subject is read back from the question with PopQA's 16
  templates (``"What is X's occupation?"``, ``"Who was the director of X?"``...); rows that fit no template
  are skipped and counted.
- **WikiDes** JSON lines ``{source, target, ...}``: the reference is ``target`` (the Wikidata short
  description) and the entity is the start of ``source`` (the article's first sentence), cut before the
  first of ``" ("``, ``"("``, ``" ["``, ``" is "``, ``" was "``, ``" are "``, ``" were "``, ``", "``, ``" – "``,
  ``" — "``, ``" - "``, ``" has "``, ``" had "``, ``" refers to "`` (see :func:`wikides_entity`). Names longer
  than 8 words or 80 characters (sentences such as "The 2002 Illinois Fighting Illini football team
  represented ...") are skipped and counted. WikiDes has no popularity.
- **Plain entity files** with an ``entity`` column, and optionally ``reference`` (or ``description``) and
  ``popularity``.

A name that occurs twice is kept once (its first row). Scores need a reference: entities without one are
described but not scored.

    >>> found = read_entities("popqa_sample_2000.json")
    >>> chosen = select_entities(found, 100)  # the 50 least and the 50 most popular
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from patchscopes.data.text import DATA_DOCS_HINT, resolve_text_path
from patchscopes.errors import PatchscopesError, read_text_file

ENTITY_KINDS = ("popqa", "popqa-questions", "wikides", "entities")
SPLITS = ("extremes", "median", "random")

# PopQA's question templates, one per relation (Mallen et al. 2023); the subject is the group.
POPQA_TEMPLATES: dict[str, str] = {
    "occupation": r"What is (.+)'s occupation\?",
    "place of birth": r"In what city was (.+) born\?",
    "genre": r"What genre is (.+)\?",
    "father": r"Who is the father of (.+)\?",
    "country": r"In what country is (.+)\?",
    "producer": r"Who was the producer of (.+)\?",
    "director": r"Who was the director of (.+)\?",
    "capital of": r"What is (.+) the capital of\?",
    "screenwriter": r"Who was the screenwriter for (.+)\?",
    "composer": r"Who was the composer of (.+)\?",
    "color": r"What color is (.+)\?",
    "religion": r"What is the religion of (.+)\?",
    "sport": r"What sport does (.+) play\?",
    "author": r"Who is the author of (.+)\?",
    "mother": r"Who is the mother of (.+)\?",
    "capital": r"What is the capital of (.+)\?",
}
_TEMPLATES = [re.compile(p) for p in POPQA_TEMPLATES.values()]

WIKIDES_SEPARATORS = (" (", "(", " [", " is ", " was ", " are ", " were ", ", ", " – ", " — ", " - ", " has ", " had ",
                      " refers to ")
MAX_NAME_WORDS = 8
MAX_NAME_CHARS = 80


@dataclass(frozen=True)
class Entity:
    """One entity to describe.

    Attributes:
        name: The entity's name: the source prompt of the description patchscope.
        reference: A reference description to score against (``None``: not scored).
        popularity: PopQA's ``s_pop`` (monthly page views), if known.
        group: ``"rare"``, ``"popular"`` or ``"all"`` once chosen by :func:`select_entities`.
        origin: ``file:row`` it was read from.
    """

    name: str
    reference: str | None = None
    popularity: float | None = None
    group: str = "all"
    origin: str = ""


@dataclass
class EntitySet:
    """The entities of one file and what was left out.

    Attributes:
        entities: The entities, in file order, each name once.
        kind: The recognised shape: ``popqa``, ``popqa-questions``, ``wikides`` or ``entities``.
        path: The file.
        rows: Rows read.
        skipped: Rows without a usable entity name (no template matched, or a WikiDes name too long).
        duplicates: Rows whose name was already taken.
    """

    entities: list[Entity] = field(default_factory=list)
    kind: str = "entities"
    path: str = ""
    rows: int = 0
    skipped: int = 0
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self):
        return iter(self.entities)

    @property
    def with_reference(self) -> int:
        """How many entities have a reference description."""
        return sum(e.reference is not None for e in self.entities)

    @property
    def with_popularity(self) -> int:
        """How many entities have a popularity."""
        return sum(e.popularity is not None for e in self.entities)

    def summary(self) -> str:
        """One line: the shape, counts and what can be scored."""
        refs, pops = self.with_reference, self.with_popularity
        return (f"{len(self.entities)} entities ({self.kind}) from {self.rows} rows of {Path(self.path).name}; "
                f"{self.skipped} rows skipped, {self.duplicates} repeated names; {refs} with a reference "
                f"description, {pops} with a popularity")


def wikides_entity(source: str) -> str | None:
    """The entity's name at the start of a WikiDes ``source`` paragraph, or ``None`` if none is found.

    The name is the text before the first separator of :data:`WIKIDES_SEPARATORS` (``" ("``, ``" is "``,
    ``", "``...). It must have at most 8 words and 80 characters.

    Example:
        >>> wikides_entity("Noel O'Flynn (born 1 December 1951) is a former Irish politician.")
        "Noel O'Flynn"
    """
    text = " ".join(source.split())
    cuts = [i for i in (text.find(sep) for sep in WIKIDES_SEPARATORS) if i > 0]
    if not cuts:
        return None
    name = text[: min(cuts)].strip()
    if not name or len(name) > MAX_NAME_CHARS or len(name.split()) > MAX_NAME_WORDS:
        return None
    return name


def popqa_subject(question: str) -> str | None:
    """The subject of a PopQA question, from PopQA's templates (``None`` if no template fits)."""
    q = " ".join(str(question).split())
    for pattern in _TEMPLATES:
        match = pattern.fullmatch(q)
        if match:
            return match.group(1).strip()
    return None


def read_entities(path: str | Path) -> EntitySet:
    """Read an entity file of any recognised shape (see the module's description).

    Args:
        path: A ``.tsv``, ``.csv``, ``.json`` or ``.jsonl`` file. A relative path not found here is looked up
            under ``$PATCHSCOPES_DATA_DIR``.

    Raises:
        PatchscopesError: The file is missing, unreadable, of no recognised shape, or holds no entity.
    """
    try:
        resolved = resolve_text_path(path)
    except PatchscopesError:
        raise PatchscopesError(f"no such entity file: {path}", hint=f"{_SHAPES_HINT}; {DATA_DOCS_HINT}") from None
    records = _read_records(resolved)
    if not records:
        raise PatchscopesError(f"the entity file {resolved} has no rows", hint=_SHAPES_HINT)
    fields = set().union(*(r.keys() for r in records[:50]))
    kind = _recognise(fields)
    if kind is None:
        raise PatchscopesError(
            f"the entity file {resolved} is of no known shape (fields: {', '.join(sorted(map(str, fields))[:12])})",
            hint=_SHAPES_HINT,
        )
    out = EntitySet(kind=kind, path=str(resolved), rows=len(records))
    seen: set[str] = set()
    for index, rec in enumerate(records, start=1):
        entity = _entity_of(kind, rec, f"{resolved.name}:{index}")
        if entity is None:
            out.skipped += 1
            continue
        if entity.name in seen:
            out.duplicates += 1
            continue
        seen.add(entity.name)
        out.entities.append(entity)
    if not out.entities:
        raise PatchscopesError(f"no usable entity in {resolved} ({out.rows} rows of shape {kind}, all skipped)",
                               hint=_SHAPES_HINT)
    return out


_SHAPES_HINT = ("give PopQA rows (a 'subj' column; TSV, CSV, JSON or JSON lines), PopQA questions with 's_pop', "
                "WikiDes JSON lines ({'source', 'target'}), or a file with an 'entity' column and optionally "
                "'reference' and 'popularity'")


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    text = read_text_file(path, "the entity file")
    try:
        if suffix in (".tsv", ".csv"):
            frame = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",", dtype=str,
                                keep_default_na=False)
            return frame.to_dict(orient="records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise PatchscopesError(f"could not read the entity file {path}: {err}", hint=_SHAPES_HINT) from err
    if suffix not in (".json", ".jsonl"):
        raise PatchscopesError(f"unknown entity file type {path.suffix or '(none)'!r}: {path}",
                               hint="use .tsv, .csv, .json or .jsonl")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise PatchscopesError(f"{path}:{number} is not JSON: {err.msg}",
                                       hint="give one JSON document, or one JSON object per line") from None
        data = records
    if isinstance(data, dict):
        # A dict of splits ({"dev": [...], "test": [...]}): the records of every list of objects.
        lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        data = [x for v in lists for x in v] if lists else [data]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise PatchscopesError(f"the entity file {path} does not hold records (JSON objects)", hint=_SHAPES_HINT)
    return data


def _recognise(fields: set) -> str | None:
    if "source" in fields and "target" in fields:
        return "wikides"
    if "subj" in fields:
        return "popqa"
    if "entity" in fields:
        return "entities"
    if ("input" in fields or "question" in fields) and "s_pop" in fields:
        return "popqa-questions"
    return None


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = " ".join(str(value).split())
    return text or None


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _entity_of(kind: str, rec: dict, origin: str) -> Entity | None:
    reference = _text(rec.get("reference", rec.get("description")))
    if kind == "wikides":
        source = _text(rec.get("source"))
        name = wikides_entity(source) if source else None
        return Entity(name, _text(rec.get("target")), None, origin=origin) if name else None
    if kind == "popqa":
        name = _text(rec.get("subj"))
        return Entity(name, reference, _number(rec.get("s_pop")), origin=origin) if name else None
    if kind == "popqa-questions":
        question = rec.get("input", rec.get("question"))
        name = popqa_subject(question) if question is not None else None
        return Entity(name, reference, _number(rec.get("s_pop")), origin=origin) if name else None
    name = _text(rec.get("entity"))
    return Entity(name, reference, _number(rec.get("popularity")), origin=origin) if name else None


def select_entities(
    entities: EntitySet | list[Entity],
    n: int | None = 100,
    *,
    split: str = "extremes",
    seed: int = 0,
) -> list[Entity]:
    """Choose ``n`` entities and label their popularity group.

    Args:
        entities: The entities (e.g. from :func:`read_entities`).
        n: How many in all (``None``: every entity). With popularities, half are rare and half popular.
        split: How to form the groups when every entity has a popularity:

            - ``"extremes"`` (the paper): the n/2 least and the n/2 most popular.
            - ``"median"``: n/2 drawn at random (seeded) below the median popularity and n/2 at or above it.
            - ``"random"``: n drawn at random, all in group ``"all"``.

            Entities without a popularity are always drawn at random, in group ``"all"``.
        seed: Seed of the random draws.

    Returns:
        The entities with ``group`` set to ``"rare"``, ``"popular"`` or ``"all"``; rare ones first.

    Raises:
        PatchscopesError: An unknown split or a bad ``n``.
    """
    import random

    items = list(entities)
    if split not in SPLITS:
        raise PatchscopesError(f"unknown popularity split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    if n is not None and n < 1:
        raise PatchscopesError(f"the number of entities must be at least 1, got {n}")
    n = len(items) if n is None else min(n, len(items))
    rng = random.Random(seed)
    popular_known = bool(items) and all(e.popularity is not None for e in items)
    if split == "random" or not popular_known or n < 2:
        chosen = rng.sample(items, n)
        return [replace(e, group="all") for e in chosen]
    ranked = sorted(items, key=lambda e: (e.popularity, e.name))
    n_rare = n // 2
    n_popular = n - n_rare
    if split == "extremes":
        rare, popular = ranked[:n_rare], ranked[len(ranked) - n_popular:]
    else:
        half = len(ranked) // 2
        low, high = ranked[:half], ranked[half:]
        rare = sorted(rng.sample(low, min(n_rare, len(low))), key=lambda e: (e.popularity, e.name))
        popular = sorted(rng.sample(high, min(n_popular, len(high))), key=lambda e: (e.popularity, e.name))
    return [replace(e, group="rare") for e in rare] + [replace(e, group="popular") for e in popular]
