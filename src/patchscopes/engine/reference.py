"""The plain reference engine: for every job, one unbatched source forward and one target run.

This is the paper's definition written as directly as possible: a forward hook reads h at (l, i) from a full
source forward, f is applied, and the target runs once over all its tokens with every intervention hooked in
(:func:`~patchscopes.engine.hooks.row_plan` with one row). Generation continues from that forward with the one
decode loop (:mod:`~patchscopes.engine.decode`), the hooks removed. It shares no grouping with the batched
engine and is kept as the ground truth the batched engine is tested against (``engine="reference"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from patchscopes.engine.decode import decode, finish_generation, generators
from patchscopes.engine.hooks import capture_hook, installed, row_plan
from patchscopes.engine.interventions import Noise, Read, SoftInput, Write, site_module
from patchscopes.engine.jobs import Job
from patchscopes.engine.readouts import Generate, Readings, top_readings


def source_hidden(read: Read) -> torch.Tensor:
    """h: the output of block l (or of its site) at position i of a full, unbatched source forward."""
    store: dict = {}
    ids = torch.tensor([read.tokens])
    hook = capture_hook(torch.tensor([0]), torch.tensor([read.position]), store, "h", stop=False)
    handle = site_module(read.model, read.layer, read.site).register_forward_hook(hook)
    try:
        read.model.forward(ids, attention_mask=torch.ones_like(ids))
    finally:
        handle.remove()
    return store["h"][0]


def run_writes(job: Job, value: torch.Tensor | None, *, base_only: bool = False) -> list[Write]:
    """Every write of ``job``'s run in order, f(h) filled in: soft inputs and noise as embedding writes, then
    the writes (left out with ``base_only``: the run every row of the job's base shares)."""
    out: list[Write] = []
    for item in job.interventions:
        if isinstance(item, (Noise, SoftInput)):
            out += item.writes()
        elif isinstance(item, Write) and not base_only:
            out.append(item if item.value is not None else Write(item.layer, item.position, value, item.site, item.add))
    return out


def target_run(job: Job, value: torch.Tensor | None, *, base_only: bool = False) -> Readings:
    """Run ``job``'s target once over all its tokens with its interventions (f(h) = ``value``)."""
    model = job.model
    ids = torch.tensor([job.tokens])
    mask = torch.ones_like(ids)
    plan = row_plan(model, [run_writes(job, value, base_only=base_only)], [job.knockout])
    generate = isinstance(job.readout, Generate)
    with installed(model, plan):
        logits, cache = model.forward(ids, attention_mask=mask, use_cache=generate)
    if not generate:
        final = logits[:, job.readout_position]
        readings = top_readings(model, final, job.readout.top_k, job.readout.full_logits)[0]
        if job.answer_ids:
            probs = torch.softmax(final[0].float(), -1)
            readings.answer_probs = [float(probs[i]) for i in job.answer_ids]
        return readings
    readout = job.readout
    first = logits[:, -1]
    readings = top_readings(model, first, readout.top_tokens, False)[0]
    new_ids = decode(model, first, cache, mask, readout, generators(model, readout, [job.index]))[0]
    readings.generated_text, readings.generated_token_ids = finish_generation(model, new_ids, readout)
    return readings


def continuation_probs(job: Job, writes: Sequence[Write], generated: Sequence[int]) -> list[float]:
    """p(generated[t] | the job's tokens, generated[:t]) with ``writes`` (teacher forcing, one forward)."""
    model, n = job.model, len(job.tokens)
    sequence = torch.tensor([list(job.tokens) + list(generated)])
    with torch.no_grad(), installed(model, row_plan(model, [writes], [job.knockout])):
        logits, _ = model.forward(sequence, attention_mask=torch.ones_like(sequence))
    probs = torch.softmax(logits[0, n - 1: n - 1 + len(generated)].float(), dim=-1)
    return probs[torch.arange(len(generated)), torch.tensor(list(generated), device=probs.device)].tolist()


def relevancy_scores(job: Job, value: torch.Tensor | None, generated: Sequence[int]) -> list[float]:
    """SelfIE's relevancy of each generated token: its probability with the job's writes minus without them
    (its noise, knockout and soft input stay in both runs)."""
    if not generated:
        return []
    with_writes = continuation_probs(job, run_writes(job, value), generated)
    without = continuation_probs(job, run_writes(job, value, base_only=True), generated)
    return [float(a - b) for a, b in zip(with_writes, without)]


def run_reference(jobs: Iterable[Job], progress=None) -> list[Readings]:
    """Run each job on its own, in order."""
    results = []
    for job in jobs:
        with torch.no_grad():
            value = None
            if job.source is not None:
                value = job.mapping(source_hidden(job.source)[None])[0].to(job.model.dtype)
            readings = target_run(job, value)
        if isinstance(job.readout, Generate) and job.readout.relevancy:
            readings.relevancy = relevancy_scores(job, value, readings.generated_token_ids or [])
        results.append(readings)
        if progress is not None:
            progress.update(1)
    return results
