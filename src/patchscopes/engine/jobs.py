"""Jobs, the engine's unit of work: one patch with every model, token id, layer and position resolved.

:func:`patchscopes.resolve.resolve_jobs` builds them from patchscopes; the engines return one
:class:`~patchscopes.engine.readouts.Readings` per job, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine.interventions import Knockout, Noise, Write
from patchscopes.engine.readouts import Generate, Readings, Readout
from patchscopes.models import LanguageModel


@dataclass(eq=False)
class Job:
    """One patch with everything resolved: the unit of work of both engines.

    The patch writes f(h) at ``(target_layer, target_position)`` (``target_layer`` may be
    :data:`~patchscopes.engine.interventions.EMBEDDINGS`); a job without a source (``source_model`` is
    ``None``) has no such patch and runs the target with its other interventions only. ``writes`` are
    further writes (f(h) again where their value is ``None``), ``noise`` is added to the target's token
    embeddings, ``knockout`` cuts attention edges, and ``answer_ids`` are read by an ``AnswerProbs``
    readout.
    """

    index: int
    source_model: LanguageModel | None
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
    add: bool = False  # the patch adds f(h) to the state instead of replacing it
    writes: tuple[Write, ...] = ()
    noise: Noise | None = None
    knockout: Knockout | None = None
    answer_ids: tuple[int, ...] = ()
    source_site: str = "block"  # where h is read: a block's output, its "mlp" or its "attn" module
    target_site: str = "block"  # where f(h) is written
    # Input vectors that replace the token embeddings of the target at positions offset .. offset + k - 1 (a
    # soft prompt): (offset, (k, d) tensor), or None.
    target_embeds: tuple[int, torch.Tensor] | None = None

    @property
    def is_single_patch(self) -> bool:
        """A single block-output replacement with no write, noise, knockout or answer readout (the target's
        input may still be a soft prompt)."""
        return (self.source_model is not None and not self.add and not self.writes and self.noise is None
                and self.knockout is None and not self.answer_ids and self.source_site == "block"
                and self.target_site == "block" and self.target_layer >= 0 and self.source_layer >= 0)

    @property
    def is_plain(self) -> bool:
        """A single block-output replacement with no other intervention (the original fast paths)."""
        return self.is_single_patch and self.target_embeds is None

    def all_writes(self, value: torch.Tensor | None) -> list[Write]:
        """Every write of the target run, the patch first, with ``value`` (f(h)) filled in where needed."""
        out = []
        if self.source_model is not None:
            out.append(Write(self.target_layer, self.target_position, value, self.target_site, self.add))
        for w in self.writes:
            out.append(w if w.value is not None else Write(w.layer, w.position, value, w.site, w.add))
        return out


def answer_logprobs(logprobs: torch.Tensor, ids: Sequence[int]) -> list[float]:
    """Probabilities of token ``ids`` from one row of log-probabilities."""
    return [float(logprobs[i].exp()) for i in ids]


def job_models(jobs: Sequence[Job]) -> list[LanguageModel]:
    """The distinct models the jobs run (sources and targets), in order of first use."""
    return list(dict.fromkeys(m for job in jobs for m in (job.source_model, job.target_model) if m is not None))


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
