"""Running patchscopes: :func:`run` turns patchscopes into results with either engine."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from patchscopes.engine import BatchBudget, Job, Readings, run_batched, run_reference, target_run
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
            forward per patch with hooks; the ground truth). Where the batched engine's fast path is not
            exact on a model (recurrent or state-space blocks, see ``LanguageModel.fast_path``), the
            reference engine runs instead, with a warning.
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
            if engine == "batched" and not batched_applies(jobs):
                engine = "reference"
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


def batched_applies(jobs: Sequence[Job]) -> bool:
    """Whether the batched engine is exact on every model of ``jobs``; warns naming those it is not."""
    models = {id(m): m for job in jobs for m in (job.source_model, job.target_model)}
    slow = [m for m in models.values() if not m.fast_path.batched]
    for model in slow:
        warnings.warn(f"{model.name}: the batched engine's fast path does not apply ({model.fast_path.reason}); "
                      "running the reference engine, one hooked forward per patch", stacklevel=3)
    return not slow


def attach_baselines(jobs: Sequence[Job], results: Sequence[PatchResult]) -> None:
    """Run each distinct target once without a patch and attach its readings to the results."""
    cache: dict[tuple, Readings] = {}
    for job, result in zip(jobs, results):
        key = (id(job.target_model), job.target_ids, job.readout_position, job.readout)
        if key not in cache:
            cache[key] = target_run(job.target_model, job.target_ids, job.readout,
                                    readout_position=job.readout_position, patch=None)
        result.baseline = cache[key]
