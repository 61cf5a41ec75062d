"""Rows that run only the blocks from their entry on, many entries in one forward.

Nothing below the first block a row's writes reach (its *entry* e) depends on them: at the row's tokens, the
outputs of blocks 0..e-1 are those of its base run, except where a block-output write at e-1 replaces (or adds to)
one. So a row needs only blocks e..L-1, started from the base run's states at block e-1 (the token embeddings for
e = 0) with those writes applied: its *landing*.

The rows of a batch are sorted by entry, so at block j the rows that have entered form the head of the batch.
Every block below the last entry is swapped for a :class:`Stair` stand-in that runs the original block on that
head only (slicing the per-row arguments the model's loop passes it), lands the rows that enter at j + 1, and
passes the other rows through untouched; rows entering at block 0 land on the token embeddings' output. Rows of
many entries thus share one forward with full-size matrix products, and no row runs a block below its entry.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Landing:
    """The states that rows entering after one block (or the embeddings) start from.

    Attributes:
        states: The base run's states there, ``(n, d)`` shared by the rows or ``(rows, n, d)`` one per row.
        rows, cols: Where the rows' writes land (row within the landing rows, position within the tokens run).
        values: The written vectors ``(k, d)``; ``adds`` which of them add to the state.
    """

    states: torch.Tensor
    rows: list[int]
    cols: list[int]
    values: torch.Tensor | None
    adds: list[bool]

    def into(self, out: torch.Tensor) -> None:
        """Write the landing states and writes over ``out`` ``(rows, n, d)``."""
        out[:] = self.states.to(out.dtype)
        if self.rows:
            r, c = torch.tensor(self.rows), torch.tensor(self.cols)
            values = self.values.to(out.device, out.dtype)
            add = torch.tensor(self.adds, device=out.device)[:, None]
            out[r, c] = torch.where(add, out[r, c] + values, values)


def _rows(value, n: int, batch: int):
    """``value`` cut to its first ``n`` batch rows: tensors of rank ≥ 2 whose first axis is the batch."""
    if isinstance(value, torch.Tensor):
        return value[:n] if value.ndim >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_rows(v, n, batch) for v in value)
    if isinstance(value, list):
        return [_rows(v, n, batch) for v in value]
    if isinstance(value, dict):
        return {key: _rows(v, n, batch) for key, v in value.items()}
    return value


class Stair(torch.nn.Module):
    """Stands in for decoder block j while rows of different entries share one forward.

    Rows ``[0, run)`` (entered at or below j) go through the original block; rows ``[run, land)`` (entering at
    j + 1) get their :class:`Landing`; the remaining rows pass through, to be overwritten when they land. The
    original block's attributes stay visible, as the model's loop may read them (an attention type, a layer index).
    """

    def __init__(self, original: torch.nn.Module, run: int, land: int, landing: Landing | None) -> None:
        super().__init__()
        for name, value in (("_original", original), ("_run", run), ("_land", land), ("_landing", landing)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, hidden_states, *args, **kwargs):
        get = object.__getattribute__
        run, land = get(self, "_run"), get(self, "_land")
        if land == 0:
            return hidden_states
        batch = hidden_states.shape[0]
        out = hidden_states.clone()
        if run:
            out[:run] = get(self, "_original")(hidden_states[:run], *_rows(args, run, batch),
                                               **_rows(kwargs, run, batch))
        if land > run:
            get(self, "_landing").into(out[run:land])
        return out


@contextlib.contextmanager
def staircase(model, entries: Sequence[int], landings: dict[int, Landing]) -> Iterator[None]:
    """Swap blocks for :class:`Stair` stand-ins for one forward over rows entering at ``entries``.

    Args:
        model: The model (its blocks are swapped, its token embedding hooked for rows entering at block 0).
        entries: Each row's entry block, in ascending order (the number of blocks: no block to run).
        landings: For each layer j in -1..L-1 where rows land (enter at j + 1), their :class:`Landing`.
    """
    if any(a > b for a, b in itertools.pairwise(entries)):
        raise ValueError("rows must be sorted by their entry block")
    blocks = model.arch.blocks
    originals = list(blocks)
    handle = None
    try:
        if -1 in landings:
            first = bisect.bisect_right(entries, 0)

            def embed_hook(module, args, output, landing=landings[-1]):
                output = output.clone()
                landing.into(output[:first])
                return output

            handle = model.arch.embed.register_forward_hook(embed_hook)
        for j in range(min(len(originals), entries[-1])):
            run, land = bisect.bisect_right(entries, j), bisect.bisect_right(entries, j + 1)
            if run < len(entries):
                blocks[j] = Stair(originals[j], run, land, landings.get(j))
        yield
    finally:
        if handle is not None:
            handle.remove()
        for j, block in enumerate(originals):
            blocks[j] = block
