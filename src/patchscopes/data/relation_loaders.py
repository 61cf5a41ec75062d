"""Relation files: reading relation JSONs and the paper's preprocessed TSVs, files and folders of them, and the
paper's WikiText windows attached to JSON relations.

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
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from patchscopes.data.relation_types import Relation, RelationSample, SourceContext
from patchscopes.data.target_prompts import PAPER_TARGET_PROMPTS, check_target_prompt
from patchscopes.data.text import DATA_DOCS_HINT
from patchscopes.errors import PatchscopesError, read_text_file

_MISSING_HINT = f"give relation .json or .tsv files, or folders of them; {DATA_DOCS_HINT}"

# Names in the relation JSON files whose key (file stem) is not simply the name with underscores.
_NAME_KEYS = {
    "substance phase of matter": "substance_phase",
    "task person type": "task_done_by_person",
    "person sport position": "person_plays_position_in_sport",
    "plays pro sport": "person_plays_pro_sport",
    "pokemon evolution": "pokemon_evolutions",
    "star constellation name": "star_constellation",
}

_SCHEMA_HINT = ('a relation JSON needs {"name", "prompt_templates": ["... {} ..."], "samples": '
                '[{"subject": ..., "object": ...}]} (the evandez/relations schema); a TSV needs the columns '
                "subject, object, prompt_target (the Patchscopes preprocessed data)")


def unescape(text: str) -> str:
    r"""Decode literal ``\uXXXX`` escapes left in some files (``"Bras\u00edlia"`` → ``"Brasília"``)."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def relation_key(name: str) -> str:
    """The key of a relation name: the paper's file stem where known, else the name in snake case."""
    name = name.strip()
    if name in _NAME_KEYS:
        return _NAME_KEYS[name]
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "relation"


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
        raise PatchscopesError(f"no such relation file: {path}", hint=_MISSING_HINT)
    text = read_text_file(path, "the relation file")
    try:
        return json.loads(text)
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
        raise PatchscopesError(f"no such relation file: {path}", hint=_MISSING_HINT)
    text = read_text_file(path, "the relation file")
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
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
    """Read a relation from a ``.json`` (relations schema) or ``.tsv`` (paper's preprocessed data) file.

    Raises:
        PatchscopesError: The file is missing, of another type, or malformed (see :func:`load_relation_json`
            and :func:`load_relation_tsv`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_relation_json(path)
    if suffix in (".tsv", ".tab"):
        return load_relation_tsv(path)
    if not path.exists():
        raise PatchscopesError(f"no such relation file: {path}", hint=_MISSING_HINT)
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
            raise PatchscopesError(f"no such relation file or folder: {path}", hint=_MISSING_HINT)
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append(p)
    if not out:
        raise PatchscopesError("no relation files given", hint=_MISSING_HINT)
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
