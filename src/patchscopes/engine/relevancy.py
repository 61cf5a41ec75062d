"""SelfIE's relevancy score (Chen, Vondrick and Mao 2024): how much each generated token owes to the
injected state.

For a generated text x_1..x_m, the score of x_t is p(x_t | prompt with the writes, x_<t) − p(x_t | prompt
without them, x_<t): both runs read the same tokens (teacher forcing), one with the job's writes at the
prompt's positions, one without (its noise and knockout, if any, stay in both). Both engines compute it
with this one function after generating.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from patchscopes.engine.interventions import (
    Write,
    one_row_hooks,
    registered,
)
from patchscopes.engine.jobs import Job
from patchscopes.engine.soft import embeds_on


def relevancy_scores(job: Job, value: torch.Tensor | None, generated: Sequence[int]) -> list[float]:
    """The relevancy of each of ``generated`` (the ids the patched run generated) for ``job``."""
    if not generated:
        return []
    with_writes = _token_probs(job, job.all_writes(value), generated)
    without = _token_probs(job, [], generated)
    return [float(a - b) for a, b in zip(with_writes, without)]


def _token_probs(job: Job, writes: Sequence[Write], generated: Sequence[int]) -> list[float]:
    model, ids = job.target_model, list(job.target_ids)
    sequence = torch.tensor([ids + list(generated)])
    plan, pre = one_row_hooks(model, writes, job.noise, job.knockout)
    with torch.no_grad(), registered(model, plan, pre), embeds_on(model, job.target_embeds):
        logits, _ = model.forward(sequence, attention_mask=torch.ones_like(sequence))
    probs = torch.softmax(logits[0, len(ids) - 1: len(ids) - 1 + len(generated)].float(), dim=-1)
    return probs[torch.arange(len(generated)), torch.tensor(list(generated), device=probs.device)].tolist()
