"""Memory bounds: what a run holds beyond its models, and ``--max-memory`` (Python: ``BatchBudget(bytes=)``).

Measured on a sweep, what grows with the number of patches (the models' weights do not count):

- **the source states**: every patch's h, captured before any target runs, and a stacked, mapped copy of them
  (f(h) for each distinct mapping): about ``2 · d · element`` bytes per patch, all at once. Under a budget with
  ``bytes``, :func:`memory_pieces` cuts the jobs into consecutive pieces whose states fit in it, run one after
  another (each piece still shares its prompts' base runs and prefixes; only a base run per piece is redone).
- **one batch's working memory** (key/value caches, activations, the vocabulary slices of the unembedding): the
  engine sizes each batch from its estimate against the same ``bytes`` (:class:`~patchscopes.engine.BatchBudget`).
- **the readings** returned, one per patch (top-k tokens, ids and probabilities, generated tokens): Python
  objects, about :func:`results_bytes`; they must all be kept, so a bound they exceed is refused before anything
  runs (:func:`check_results_fit`).

``--max-memory M`` gives a quarter of M to a piece's states, a quarter to one batch and half to the readings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from patchscopes.engine import BatchBudget, Generate, Job, device_budget
from patchscopes.errors import PatchscopesError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30, "t": 2**40, "tib": 2**40}
"""Size units: KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB (or K, M, G, T) powers of 1024."""
MIN_MEMORY = 2**20
"""The smallest bound accepted (1 MiB): below it not even one batch row of a small model fits."""
READING_BYTES = 500
"""Bytes one patch's result takes in Python beyond its tokens (its Readings, PatchResult and lists). Measured
with tracemalloc on sweeps of the tiny Llama: 795 bytes per top-3 patch, 1,517 per top-10 patch, 1,705 per
20-token description with 10 top tokens."""
TOKEN_BYTES = 105
"""Bytes per kept top-k token (its string, id and probability, and their list slots)."""
GENERATED_BYTES = 16
"""Bytes per generated token (its id; the text is one string)."""


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Bytes of a size written as ``2GB``, ``500MB``, ``1.5GiB``, ``512M`` or a plain number of bytes.

    Raises:
        PatchscopesError: Not a size (an unknown unit, a sign, spaces inside the number, non-ASCII digits), not
            finite, or below :data:`MIN_MEMORY`.
    """
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)", text.strip())
    if match is None or match.group(2).lower() not in UNITS:
        raise PatchscopesError(f"{option} {text!r} is not a size",
                               hint="give a number and a unit, e.g. 2GB, 500MB or 1.5GiB (KB, MB, GB: powers of "
                                    "1000; KiB, MiB, GiB: powers of 1024)")
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < MIN_MEMORY:
        raise PatchscopesError(f"{option} {text!r} is less than 1 MiB",
                               hint="give the memory the patches may use beyond the model, e.g. 2GB")
    return int(value)


def format_size(n: int) -> str:
    """``n`` bytes, readably (``1.5 GB``)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def memory_budget(max_bytes: int, models: Sequence = (), *, rows: int | None = None,
                  tokens: int | None = None) -> BatchBudget:
    """The batch budget of ``--max-memory``: the device's rows and tokens for ``models`` (or ``rows``,
    ``tokens``), and a quarter of ``max_bytes`` (or less, where the device has less free) for one batch and for
    the source states held at once."""
    device = device_budget(models)
    limit = max_bytes // 4 if device.bytes is None else min(device.bytes, max_bytes // 4)
    return BatchBudget(rows=rows or device.rows, tokens=tokens or device.tokens, bytes=max(1, limit))


def state_bytes(job: Job) -> int:
    """Bytes a job's source state holds while its piece runs: h, its stacked copy, and f(h) on the target."""
    if job.source is None:
        return 0
    source, target = job.source.model, job.model
    return (2 * source.hidden_size * torch.finfo(source.dtype).bits // 8
            + target.hidden_size * torch.finfo(target.dtype).bits // 8)


def memory_pieces(jobs: Sequence[Job], budget: BatchBudget | None) -> list[Sequence[Job]]:
    """``jobs`` cut into consecutive pieces whose source states fit in ``budget.bytes`` (one piece without it)."""
    if budget is None or not budget.bytes:
        return [jobs]
    pieces, start, held = [], 0, 0
    for k, job in enumerate(jobs):
        need = state_bytes(job)
        if k > start and held + need > budget.bytes:
            pieces.append(jobs[start:k])
            start, held = k, 0
        held += need
    return [*pieces, jobs[start:]] if jobs else [jobs]


def results_bytes(readouts: Sequence) -> int:
    """About how many bytes the results of patches with these readouts take (see :data:`READING_BYTES`)."""
    total = 0
    for readout in readouts:
        if isinstance(readout, Generate):
            total += READING_BYTES + TOKEN_BYTES * readout.top_tokens + GENERATED_BYTES * readout.max_new_tokens
        else:
            total += READING_BYTES + TOKEN_BYTES * getattr(readout, "top_k", 10)
    return total


def check_results_fit(readouts: Sequence, max_bytes: int, option: str = "--max-memory") -> None:
    """Refuse, before anything runs, a run whose results alone need more than half of ``max_bytes``.

    Raises:
        PatchscopesError: The estimate (:func:`results_bytes`) exceeds the half.
    """
    need = results_bytes(readouts)
    if need > max_bytes // 2:
        raise PatchscopesError(
            f"the results of these {len(readouts):,} patches need about {format_size(need)}, more than the half of "
            f"{option} {format_size(max_bytes)} they may take",
            hint=f"sweep fewer layers or positions, keep fewer top tokens, or give a larger {option}")
