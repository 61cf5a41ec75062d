"""Jobs, the engine's unit of work: one patch with every model, token id, layer and position resolved.

:func:`patchscopes.resolve.resolve_jobs` builds them from patchscopes; the engines return one
:class:`~patchscopes.engine.readouts.Readings` per job, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine.readouts import Generate, Readings, Readout
from patchscopes.models import LanguageModel


@dataclass(eq=False)
class Job:
    """One patch with everything resolved: the unit of work of both engines."""

    index: int
    source_model: LanguageModel
    source_ids: tuple[int, ...]
    source_layer: int
    source_position: int
    target_model: LanguageModel
    target_ids: tuple[int, ...]
    target_layer: int
    target_position: int
    mapping: Callable[[torch.Tensor], torch.Tensor]  # f, applied to the source state
    readout: Readout
    readout_position: int | None  # NextToken only
    source_text: str | None = None  # the source prompt as text, when it was given as token ids
    target_text: str | None = None  # the same for the target prompt
    # Input vectors that replace the token embeddings of the target at positions offset .. offset + k - 1 (a
    # soft prompt): (offset, (k, d) tensor), or None.
    target_embeds: tuple[int, torch.Tensor] | None = None


def top_readings(model: LanguageModel, logits: torch.Tensor, k: int, keep_full: bool) -> list[Readings]:
    """Top-k tokens and probabilities of each row of ``logits`` ``(n, vocab)``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logprobs.shape[-1])
    values, indices = logprobs.topk(k, dim=-1)
    probs = values.exp().cpu().tolist()
    ids = indices.cpu().tolist()
    out = []
    for row in range(logits.shape[0]):
        out.append(
            Readings(
                top_tokens=model.token_strings(ids[row]),
                top_token_ids=ids[row],
                top_probs=probs[row],
                logits=logits[row].float().cpu().clone() if keep_full else None,
            )
        )
    return out


def finish_generation(model: LanguageModel, new_ids: Sequence[int], readout: Generate) -> tuple[str, list[int]]:
    """Cut generated ids at the first end-of-sequence token and the text before the first stop string."""
    eos = model.eos_token_ids
    kept: list[int] = []
    for token in new_ids:
        if int(token) in eos:
            break
        kept.append(int(token))
    text = model.decode(kept)
    cut = cut_at_stop(text, readout.stop)
    if cut != text:
        # Keep the ids up to the token that completes the first stop string, as decoding stops there; the
        # reference engine generates past it, and both must report the same ids.
        for end in range(1, len(kept) + 1):
            partial = model.decode(kept[:end])
            if cut_at_stop(partial, readout.stop) != partial:
                kept = kept[:end]
                break
    return cut, kept


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            idx = text.find(s)
            if 0 <= idx < cut:
                cut = idx
    return text[:cut]
