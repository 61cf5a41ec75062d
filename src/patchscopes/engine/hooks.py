"""Forward hooks on decoder blocks: read a block's output, overwrite parts of it, or stop the forward.

These are the only places where the engine touches a model's internals, and they rely on nothing but the
block list of the :class:`~patchscopes.models.architectures.ArchitectureSpec`: a block's output is its first
return value (a tensor, or the first item of a tuple in older transformers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed has been read."""


def block_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a block's output."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def with_block_output(output: object, hidden: torch.Tensor) -> object:
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def hooks_on(blocks: nn.ModuleList, hooks: dict[int, Callable]) -> Iterator[None]:
    """Register ``hooks[layer]`` as a forward hook on ``blocks[layer]`` for the duration of the block."""
    handles = [blocks[layer].register_forward_hook(fn) for layer, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_hook(rows: torch.Tensor, cols: torch.Tensor, store: dict, key: object, stop: bool) -> Callable:
    """A hook that saves ``output[rows, cols]`` under ``store[key]`` and optionally stops the forward."""

    def hook(module, args, output):
        hidden = block_output(output)
        store[key] = hidden[rows.to(hidden.device), cols.to(hidden.device)].detach().clone()
        if stop:
            raise StopForward
        return output

    return hook


def patch_hook(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, *, once: bool = False) -> Callable:
    """A hook that writes ``values`` over ``output[rows, cols]``.

    Args:
        rows: Batch rows to patch.
        cols: The position patched in each row.
        values: One vector per row, ``(n, d)``.
        once: Patch only the first call (the prefill of a generation), leaving later decoding steps alone.
    """
    state = {"done": False}

    def hook(module, args, output):
        if once and state["done"]:
            return output
        state["done"] = True
        hidden = block_output(output)
        hidden[rows.to(hidden.device), cols.to(hidden.device)] = values.to(hidden.device, hidden.dtype)
        return with_block_output(output, hidden)

    return hook
