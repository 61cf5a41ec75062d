"""Running patchscopes: :func:`run` turns patchscopes into results with either engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from patchscopes.engine import BatchBudget, Job, Readings, run_batched, run_reference, target_run
from patchscopes.engine.soft import soft_key
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.resolve import resolve_jobs, to_result
from patchscopes.results import PatchResult
from patchscopes.scope import Patchscope

Engine = Literal["batched", "reference"]


def run(
    scopes: Patchscope | Sequence[Patchscope],
    model: LanguageModel | None = None,
    *,
    engine: Engine = "batched",
    baseline: bool = False,
    budget: BatchBudget | None = None,
    progress: bool = False,
) -> list[PatchResult]:
    """Run one or many patchscopes.

    Args:
        scopes: The patches; each is an independent job.
        model: The model for sources and targets that name none.
        engine: ``"batched"`` (fast: shared work done once, rows batched) or ``"reference"`` (one plain
            forward per patch with hooks; the ground truth).
        baseline: Also run each distinct target unpatched and attach it to every result.
        budget: Micro-batch limits of the batched engine.
        progress: Show a progress bar.

    Returns:
        One :class:`~patchscopes.results.PatchResult` per scope, in order.

    Raises:
        PatchscopesError: A scope is invalid (checked for all scopes before anything runs).
    """
    scopes = [scopes] if isinstance(scopes, Patchscope) else list(scopes)
    jobs = resolve_jobs(scopes, model)
    bar = tqdm(total=len(jobs), desc="patching", unit="patch", disable=not progress or not jobs)
    try:
        with torch.no_grad():
            if engine == "batched":
                readings = run_batched(jobs, budget or BatchBudget(), progress=bar)
            elif engine == "reference":
                readings = run_reference(jobs, progress=bar)
            else:
                raise PatchscopesError(f"unknown engine {engine!r}", hint="use 'batched' or 'reference'")
            results = [to_result(job, scope, r) for job, scope, r in zip(jobs, scopes, readings)]
            if baseline:
                attach_baselines(jobs, results)
    finally:
        bar.close()
    return results


def attach_baselines(jobs: Sequence[Job], results: Sequence[PatchResult]) -> None:
    """Run each distinct target once without a patch and attach its readings to the results."""
    cache: dict[tuple, Readings] = {}
    for job, result in zip(jobs, results):
        soft = None if job.target_embeds is None else soft_key(job.target_embeds)
        key = (id(job.target_model), job.target_ids, soft, job.readout_position, job.readout)
        if key not in cache:
            cache[key] = target_run(job.target_model, job.target_ids, job.readout,
                                    readout_position=job.readout_position, patch=None, embeds=job.target_embeds)
        result.baseline = cache[key]
