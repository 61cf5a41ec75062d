"""Soft-prompt targets: target runs whose input at some positions is given as vectors instead of tokens.

The vectors replace the output of the model's token embedding at those positions (so they live where token
embeddings do; a family that scales its embeddings afterwards, as Gemma 2 does, scales them alike). Both
engines use :func:`embeds_on`; the batched engine runs each group of jobs that share a soft-prompt target in
one unpadded forward (:func:`run_soft_group`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from patchscopes.engine.hooks import hooks_on, patch_hook
from patchscopes.engine.jobs import Job, top_readings
from patchscopes.engine.readouts import NextToken, Readings
from patchscopes.models import LanguageModel


@contextmanager
def embeds_on(model: LanguageModel, embeds: tuple[int, torch.Tensor] | None, *, once: bool = True) -> Iterator[None]:
    """While active, the token embedding's output at positions ``offset .. offset + k - 1`` of every row is
    replaced by the ``(k, d)`` vectors of ``embeds = (offset, vectors)``; with ``once``, only in the first
    forward (the prefill of a generation), so that later decoding steps read their own tokens."""
    if embeds is None:
        yield
        return
    offset, vectors = embeds
    state = {"done": False}

    def hook(module, args, output):
        if once and state["done"]:
            return output
        state["done"] = True
        k = vectors.shape[0]
        written = vectors.to(output.device, output.dtype)[None].expand(output.shape[0], k, -1)
        return torch.cat([output[:, :offset], written, output[:, offset + k:]], dim=1)

    handle = model.arch.embed.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def soft_key(embeds: tuple[int, torch.Tensor]) -> tuple:
    """What tells soft prompts apart: the offset and the vectors' storage and shape (views of one tensor,
    as ``SoftPrompt.with_after`` makes, share it)."""
    offset, vectors = embeds
    return offset, vectors.data_ptr(), tuple(vectors.shape)


def run_soft_group(
    model: LanguageModel, embeds: tuple[int, torch.Tensor], group: Sequence[Job],
    values: dict[int, torch.Tensor], *, rows_per_batch: int = 64, progress=None,
) -> dict[int, Readings]:
    """Next-token readings of jobs that share one soft prompt, target length, layer, position and readout
    position (their tokens around the vectors may differ): one unpadded forward per batch of rows, each row
    with its own tokens and patched with its own value."""
    first = group[0]
    assert isinstance(first.readout, NextToken)
    out: dict[int, Readings] = {}
    for start in range(0, len(group), rows_per_batch):
        part = group[start: start + rows_per_batch]
        n = len(part)
        input_ids = torch.tensor([list(job.target_ids) for job in part])
        rows = torch.arange(n)
        cols = torch.full((n,), first.target_position)
        patch = patch_hook(rows, cols, torch.stack([values[job.index] for job in part]))
        with torch.no_grad(), embeds_on(model, embeds), hooks_on(model.arch.blocks, {first.target_layer: patch}):
            logits, _ = model.forward(input_ids, attention_mask=torch.ones_like(input_ids))
        readings = top_readings(model, logits[:, first.readout_position], first.readout.top_k,
                                first.readout.full_logits)
        for job, reading in zip(part, readings):
            out[job.index] = reading
        if progress is not None:
            progress.update(n)
    return out
