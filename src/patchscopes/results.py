"""Results of patches: one :class:`PatchResult` per patch, tables and files.

Tables are pandas DataFrames with one row per patch. :func:`save_results` writes them as JSON (a list of
records), CSV (list columns as JSON strings) or Parquet, chosen by the file's extension, and
:func:`load_results` reads any of them back into the same DataFrame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import torch

from patchscopes.engine.readouts import READING_FIELDS, Readings
from patchscopes.errors import PatchscopesError
from patchscopes.scope import EMBEDDINGS, Layer
from patchscopes.storage import write_output

__all__ = ["PatchResult", "Readings", "load_results", "results_to_frame", "save_results", "to_records"]

LIST_COLUMNS = (
    "top_tokens", "top_token_ids", "top_probs",
    "baseline_top_tokens", "baseline_top_token_ids", "baseline_top_probs", "generated_token_ids", "answer_probs",
    "relevancy",
)


@dataclass
class PatchResult:
    """The outcome of one patch, with its resolved coordinates.

    Attributes:
        source_model, target_model: The models' names.
        source_prompt, source_layer, source_position, source_token: The resolved source (l, i and the
            token at i). ``source_layer`` is a block index, or ``"embeddings"`` for the token embeddings.
        target_prompt, target_layer, target_position: The resolved target (l*, i*); ``target_layer`` is a block
            index or ``"embeddings"``, never a negative number (0.2 wrote -1 for the embeddings; such files load
            as ``"embeddings"``). A run without a patch (a baseline, a corrupted run) has ``-1`` in both layers
            and an empty ``source_model``.
        mapping: The name of f.
        readings: What the patched run showed.
        baseline: What the same target run showed without the patch, when asked for.
    """

    source_model: str
    source_prompt: str
    source_layer: Layer
    source_position: int
    source_token: str
    target_model: str
    target_prompt: str
    target_layer: Layer
    target_position: int
    mapping: str
    readings: Readings
    baseline: Readings | None = None

    @property
    def top_token(self) -> str:
        """The most likely next token of the patched run."""
        return self.readings.top_tokens[0] if self.readings.top_tokens else ""

    @property
    def top_tokens(self) -> list[str]:
        """The top-k next tokens of the patched run, most likely first."""
        return self.readings.top_tokens

    @property
    def top_probs(self) -> list[float]:
        """Their probabilities."""
        return self.readings.top_probs

    @property
    def generated_text(self) -> str | None:
        return self.readings.generated_text

    @property
    def logits(self) -> torch.Tensor | None:
        return self.readings.logits

    def to_record(self) -> dict:
        """A flat, JSON-safe dict (no tensors)."""
        # (not dataclasses.asdict: it would deep-copy the readings, logits included, only to drop them)
        record = {name: getattr(self, name) for name in _COORDINATES}
        record.update({name: getattr(self.readings, name) for name in READING_FIELDS})
        b = self.baseline
        record.update(
            baseline_top_tokens=None if b is None else b.top_tokens,
            baseline_top_token_ids=None if b is None else b.top_token_ids,
            baseline_top_probs=None if b is None else b.top_probs,
            baseline_generated_text=None if b is None else b.generated_text,
        )
        return record


_COORDINATES = tuple(f.name for f in fields(PatchResult) if f.name not in ("readings", "baseline"))


def results_to_frame(results: list[PatchResult]) -> pd.DataFrame:
    """One row per patch; list columns hold Python lists. ``top_token`` is the patched argmax."""
    frame = pd.DataFrame([r.to_record() for r in results])
    if len(frame):
        frame.insert(frame.columns.get_loc("top_tokens"), "top_token", [r.top_token for r in results])
        frame.insert(frame.columns.get_loc("top_probs") + 1, "top_prob",
                     [r.readings.top_probs[0] if r.readings.top_probs else None for r in results])
    return frame


def save_results(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a results table to ``.json``, ``.csv`` or ``.parquet`` (by extension), atomically.

    Raises:
        PatchscopesError: An unknown extension, or a file that cannot be written.
    """
    final = Path(path)
    suffix = final.suffix.lower()
    if suffix not in (".json", ".csv", ".parquet", ".pq"):
        raise PatchscopesError(f"unknown results format {final.suffix!r}", hint="use .json, .csv or .parquet")
    return write_output(final, lambda tmp: _write_results(frame, tmp, suffix), "the results")


def _write_results(frame: pd.DataFrame, path: Path, suffix: str) -> None:
    """Write ``frame`` to ``path`` (a temporary file of :func:`save_results`) in the format of ``suffix``."""
    if suffix == ".json":
        with path.open("w", encoding="utf-8") as handle:  # streamed: json.dumps with indent holds every piece
            json.dump(to_records(frame), handle, indent=1, ensure_ascii=False)
    elif suffix == ".csv":
        out = _layers_as_text(frame)
        for col in out.columns:
            if col in LIST_COLUMNS or out[col].map(lambda v: isinstance(v, (list, dict))).any():
                out[col] = out[col].map(lambda v: None if v is None else json.dumps(v, ensure_ascii=False))
        out.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        _layers_as_text(frame).to_parquet(path, index=False)
    else:
        raise PatchscopesError(f"unknown results format {path.suffix!r}", hint="use .json, .csv or .parquet")


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`save_results`."""
    path = Path(path)
    if not path.is_file():
        raise PatchscopesError(f"no such results file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _named_layers(pd.DataFrame(json.loads(path.read_text())))
    if suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        for col in frame.columns:
            if col in LIST_COLUMNS:
                frame[col] = frame[col].map(lambda v: json.loads(v) if isinstance(v, str) else None)
        return _named_layers(frame)
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        for col in frame.columns:
            if col in LIST_COLUMNS:
                frame[col] = frame[col].map(lambda v: None if v is None else list(v))
        return _named_layers(frame)
    raise PatchscopesError(f"unknown results format {path.suffix!r}", hint="use .json, .csv or .parquet")


LAYER_COLUMNS = ("source_layer", "target_layer")
"""The columns holding a layer: a block index or ``"embeddings"``."""


def _layers_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose layer columns are text where they mix block indices with ``"embeddings"`` (CSV reads such a
    column back as text anyway, and Parquet cannot hold a column of mixed types)."""
    out = frame.copy()
    for col in LAYER_COLUMNS:
        if col in out.columns and out[col].map(lambda v: isinstance(v, str)).any():
            out[col] = out[col].map(str)
    return out


def _named_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """Layer columns as written by :func:`results_to_frame`: block indices as ints, ``"embeddings"`` by name.

    Files written by 0.2 held -1 for a patch at the embeddings; in a row with a source model (a patch, not an
    unpatched run, whose layers stay -1) it is read as ``"embeddings"``.
    """
    if "source_model" not in frame.columns or not any(c in frame.columns for c in LAYER_COLUMNS):
        return frame
    patched = frame["source_model"].map(lambda v: isinstance(v, str) and v != "")
    for col in LAYER_COLUMNS:
        if col not in frame.columns:
            continue
        values = [EMBEDDINGS if v == EMBEDDINGS or (p and _as_int(v) == -1) else _as_int(v)
                  for v, p in zip(frame[col], patched)]
        frame[col] = pd.Series(values, index=frame.index, dtype=object if EMBEDDINGS in values else None)
    return frame


def _as_int(value) -> int | str:
    """A layer read from a file as an int where it is one (CSV and Parquet text columns hold ``"3"``)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def to_records(frame: pd.DataFrame) -> list[dict]:
    """A results table as the JSON records :func:`save_results` writes to ``.json`` (and ``inspect --json``).

    List columns become plain lists and missing values ``None``, so the records go straight to ``json.dumps``.
    """
    records = frame.to_dict(orient="records")
    for rec in records:
        for key, value in rec.items():
            if hasattr(value, "tolist"):
                rec[key] = value.tolist()
            elif isinstance(value, float) and value != value:  # NaN
                rec[key] = None
    return records
