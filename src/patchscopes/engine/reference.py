"""The plain reference engine: for every patch, one unbatched source forward and one target run.

This is the paper's definition written as directly as possible: a forward hook reads h at (l, i) from a
full source forward, f is applied, and a second hook writes f(h) at (l*, i*) of the target run. Generation
uses Hugging Face ``generate`` with the hook active on its first (prefill) call only. It is slow and is
kept as the ground truth the batched engine is tested against (``engine="reference"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from patchscopes.engine.hooks import capture_hook
from patchscopes.engine.interventions import (
    Knockout,
    Noise,
    Write,
    one_row_hooks,
    registered,
    site_module,
)
from patchscopes.engine.jobs import Job, answer_logprobs, finish_generation, top_readings
from patchscopes.engine.readouts import Generate, NextToken, Readings
from patchscopes.engine.relevancy import relevancy_scores
from patchscopes.engine.soft import embeds_on
from patchscopes.models import LanguageModel


def source_hidden(job: Job) -> torch.Tensor:
    """h: the output of block l (or of its site) at position i of a full, unbatched source forward."""
    model = job.source_model
    store: dict = {}
    ids = torch.tensor([job.source_ids])
    hook = capture_hook(torch.tensor([0]), torch.tensor([job.source_position]), store, "h", stop=False)
    handle = site_module(model, job.source_layer, job.source_site).register_forward_hook(hook)
    try:
        model.forward(ids, attention_mask=torch.ones_like(ids))
    finally:
        handle.remove()
    return store["h"][0]


def target_run(
    model: LanguageModel,
    ids: tuple[int, ...],
    readout: NextToken | Generate,
    *,
    readout_position: int | None,
    writes: Sequence[Write] = (),
    noise: Noise | None = None,
    knockout: Knockout | None = None,
    answer_ids: Sequence[int] = (),
    embeds: tuple[int, torch.Tensor] | None = None,
) -> Readings:
    """Run the target prompt once with its ``writes`` (the patch first; none for the unpatched run), embedding
    ``noise`` and attention ``knockout``; ``embeds`` (a soft prompt: ``(offset, (k, d) vectors)``) replaces the
    token embeddings at those positions."""
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    plan, pre = one_row_hooks(model, writes, noise, knockout, once=isinstance(readout, Generate))
    with registered(model, plan, pre), embeds_on(model, embeds):
        if isinstance(readout, NextToken):
            logits, _ = model.forward(input_ids, attention_mask=mask)
            row = logits[:, readout_position]
            readings = top_readings(model, row, readout.top_k, readout.full_logits)[0]
            if answer_ids:
                readings.answer_probs = answer_logprobs(torch.log_softmax(row[0].float(), -1), answer_ids)
            return readings
        return _generate(model, input_ids, mask, readout)


def _generate(model: LanguageModel, input_ids: torch.Tensor, mask: torch.Tensor, readout: Generate) -> Readings:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=readout.max_new_tokens,
        do_sample=readout.do_sample,
        temperature=readout.temperature if readout.do_sample else None,
        top_k=readout.top_k if readout.do_sample and readout.top_k else None,
        top_p=readout.top_p if readout.do_sample and readout.top_p < 1.0 else None,
        eos_token_id=sorted(model.eos_token_ids) or None,
        pad_token_id=model.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    if readout.do_sample:
        torch.manual_seed(readout.seed)
    out = model.hf.generate(
        input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device), generation_config=config
    )
    new_ids = out.sequences[0, input_ids.shape[1]:].tolist()
    first = top_readings(model, out.logits[0], readout.top_tokens, False)[0]
    text, kept = finish_generation(model, new_ids, readout)
    first.generated_text = text
    first.generated_token_ids = kept
    return first


def run_reference(jobs: Iterable[Job], progress=None) -> list[Readings]:
    """Run each job on its own, in order."""
    results = []
    for job in jobs:
        value = None
        if job.source_model is not None:
            h = source_hidden(job)
            with torch.no_grad():
                value = job.mapping(h[None])[0].to(job.target_model.dtype)
        writes = job.all_writes(value)
        readings = target_run(
            job.target_model, job.target_ids, job.readout, readout_position=job.readout_position,
            writes=writes, noise=job.noise, knockout=job.knockout, answer_ids=job.answer_ids,
            embeds=job.target_embeds,
        )
        if isinstance(job.readout, Generate) and job.readout.relevancy:
            readings.relevancy = relevancy_scores(job, value, readings.generated_token_ids or [])
        results.append(readings)
        if progress is not None:
            progress.update(1)
    return results
