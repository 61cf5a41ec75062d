"""Next-token rows that run only the blocks above their patch layer, many patch layers in one forward.

For a next-token readout nothing below the patch layer l* depends on the patch: the outputs of blocks
0..l* at the target's suffix tokens are those of the unpatched target run, except at i*, where block l*'s
output *is* f(h). So a row patched at l* needs only blocks l*+1..L-1.

The rows of a batch are sorted by l*, so at block j the rows with l* < j form the head of the batch. Every
block is swapped for a :class:`Stair` stand-in that runs the original block on that head only (slicing the
per-row arguments the model's loop passes it), writes the stored unpatched states with f(h) at i* into the
rows whose l* is j, and passes the other rows through untouched. Rows of many patch layers thus share one
forward with full-size matrix products, and no row runs a block below its patch layer.

The target prefix (the tokens before i*) is shared by all rows through
:func:`patchscopes.engine.prefix.shared_prefix_view`.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Iterator, Sequence

import torch

from patchscopes.engine.hooks import capture_hook, hooks_on


def unpatched_suffix_states(model, input_ids, mask, positions, cache, layers: set[int]):
    """Outputs of blocks ``layers`` at the suffix tokens of the unpatched target run, ``(n_suffix, d)`` each.

    Returns ``None`` where blocks cannot be skipped: blocks that return tuples (older transformers), or a
    model dispatched over several devices.
    """
    if not layers or len(set(getattr(model.hf, "hf_device_map", {"": 0}).values())) > 1:
        return None
    store: dict = {}
    kinds: set[bool] = set()
    n = input_ids.shape[1]

    def make(layer: int):
        grab = capture_hook(torch.zeros(n, dtype=torch.long), torch.arange(n), store, layer, stop=False)

        def hook(module, args, output):
            kinds.add(isinstance(output, tuple))
            return grab(module, args, output)

        return hook

    with torch.no_grad(), hooks_on(model.arch.blocks, {layer: make(layer) for layer in layers}):
        model.forward(input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=cache is not None, logits_to_keep=1)
    return None if True in kinds else store


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
    """Stands in for decoder block j while rows patched at different layers share one forward.

    Rows ``[0, run)`` (patched below j) go through the original block; rows ``[run, land)`` (patched at j)
    get ``state`` with their ``values`` written at suffix position 0 (i*); the remaining rows (patched above
    j) pass through, to be overwritten at their own patch layer. The original block's attributes stay
    visible, as the model's loop may read them (an attention type, a layer index).
    """

    def __init__(self, original: torch.nn.Module, run: int, land: int, state: torch.Tensor | None,
                 values: torch.Tensor | None) -> None:
        super().__init__()
        for name, value in (("_original", original), ("_run", run), ("_land", land), ("_state", state),
                            ("_values", values)):
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
            out[run:land] = get(self, "_state").to(out.dtype)
            out[run:land, 0] = get(self, "_values").to(out.dtype)
        return out


@contextlib.contextmanager
def staircase(blocks: torch.nn.ModuleList, row_layers: Sequence[int], states: dict[int, torch.Tensor],
              values: torch.Tensor) -> Iterator[None]:
    """Swap blocks for :class:`Stair` stand-ins for one forward over rows patched at ``row_layers``.

    Args:
        blocks: The model's decoder blocks.
        row_layers: Each row's patch layer l*, in ascending order.
        states: The unpatched outputs of each block in ``row_layers`` at the suffix tokens, ``(n, d)``.
        values: Each row's f(h), ``(rows, d)``.
    """
    if any(a > b for a, b in itertools.pairwise(row_layers)):
        raise ValueError("rows must be sorted by their patch layer")
    rows = len(row_layers)
    originals = list(blocks)
    try:
        for j in range(row_layers[-1] + 1):
            run = bisect.bisect_left(row_layers, j)
            land = bisect.bisect_right(row_layers, j)
            if run == rows:
                continue
            blocks[j] = Stair(originals[j], run, land, states.get(j), values[run:land] if land > run else None)
        yield
    finally:
        for j, block in enumerate(originals):
            blocks[j] = block
