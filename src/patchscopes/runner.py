"""Running patchscopes: :func:`run` turns patchscopes into results with either engine, here or on an executor,
keeping finished shards in a run directory when given one."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from patchscopes.engine import BatchBudget, Engine, Generate, Job, Readings, check_engine, job_models
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.resolve import check_readings, resolve_jobs, to_result
from patchscopes.results import PatchResult
from patchscopes.runs.executors import Executor, LocalExecutor
from patchscopes.runs.run_dir import RunDir, open_run_dir
from patchscopes.runs.shards import DEFAULT_SHARD_SIZE, plan_shards, readings_to_records, records_to_readings
from patchscopes.scope import Patchscope, Target

_LOG = logging.getLogger("patchscopes")


def announce(message: str, progress: bool) -> None:
    """Say ``message`` (what a run is about to do, or has found done): to the ``patchscopes`` logger, and with
    ``progress``, on stderr above the progress bars."""
    _LOG.info(message)
    if progress:
        tqdm.write(message, file=sys.stderr)


def run(
    scopes: Patchscope | Sequence[Patchscope],
    model: LanguageModel | None = None,
    *,
    engine: Engine = "batched",
    baseline: bool = False,
    budget: BatchBudget | None = None,
    progress: bool = False,
    executor: Executor | None = None,
    run_dir: RunDir | str | Path | None = None,
    shard_size: int | None = None,
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
        executor: Who runs the patches: :class:`~patchscopes.runs.LocalExecutor` (this process, the default) or
            :class:`~patchscopes.runs.RayExecutor` (a Ray cluster, one model replica per worker).
        run_dir: A run directory (a path or an open :class:`~patchscopes.runs.RunDir`): each finished shard is
            written there, and a run given the same directory again skips the shards it finds.
        shard_size: Patches per shard; by default all in one, or
            :data:`~patchscopes.runs.DEFAULT_SHARD_SIZE` with a run directory or another executor.

    Returns:
        One :class:`~patchscopes.results.PatchResult` per scope, in order.

    Raises:
        PatchscopesError: A scope is invalid (checked for all scopes before anything runs), or ``run_dir`` holds
            another run.
    """
    scopes = [scopes] if isinstance(scopes, Patchscope) else list(scopes)
    check_engine(engine)
    if shard_size is not None and shard_size < 1:
        raise PatchscopesError(f"shard_size must be at least 1, got {shard_size}")
    jobs = resolve_jobs(scopes, model)
    n_patches = len(jobs)
    if baseline:  # the unpatched runs go through the same engine, executor and run directory as the patches
        extra, which = baseline_scopes(jobs, scopes)
        scopes += extra
        jobs += resolve_jobs(extra, model)
        for k, job in enumerate(jobs[n_patches:]):
            job.index = n_patches + k
    if engine == "batched" and not batched_applies(jobs):
        engine = "reference"
    executor = executor or LocalExecutor()
    if shard_size is None and (run_dir is not None or not isinstance(executor, LocalExecutor)):
        shard_size = DEFAULT_SHARD_SIZE
    shards = plan_shards(jobs, shard_size, engine, keyed=run_dir is not None)
    models = job_models(jobs)
    store = open_run_dir(run_dir, command="run", settings={"engine": engine, "shard_size": shard_size},
                         models=models, data=[shard.key for shard in shards])
    readings: list[Readings | None] = [None] * len(jobs)
    if jobs:  # the cost, said before the work starts
        n_base = len(jobs) - n_patches
        baselines = f" and {n_base:,} unpatched baseline run{'' if n_base == 1 else 's'}" if baseline else ""
        how = "reference engine: one forward each" if engine == "reference" else "batched engine"
        announce(f"running {n_patches:,} patch{'' if n_patches == 1 else 'es'}{baselines} ({how})", progress)
    bar = tqdm(total=len(jobs), desc="patching", unit="patch", disable=not progress or not jobs)
    try:
        todo = []
        for shard in shards:
            # checked against its checksums and count; a corrupt shard is reported (a warning) and redone
            found = store.read_shard(shard.key, count=shard.stop - shard.start) if store is not None else None
            if found is not None:
                readings[shard.start: shard.stop] = records_to_readings(*found)
                bar.update(shard.stop - shard.start)
            else:
                todo.append(shard)
        if store is not None and len(todo) < len(shards):
            done = sum(shard.stop - shard.start for shard in shards) - sum(shard.stop - shard.start for shard in todo)
            announce(f"reused {len(shards) - len(todo):,} of {len(shards):,} shards ({done:,} of {len(jobs):,} "
                     f"patches) from the run directory {store.path}; running the other {len(todo):,}", progress)
        if todo:
            for shard, shard_readings in executor.run_shards(scopes, jobs, todo, model=model, engine=engine,
                                                             budget=budget, progress=bar):
                if store is not None:
                    store.write_shard(shard.key, *readings_to_records(shard_readings))
                readings[shard.start: shard.stop] = shard_readings
        results = [to_result(job, scope, r) for job, scope, r in
                   zip(jobs[:n_patches], scopes[:n_patches], readings[:n_patches])]
        if baseline:
            for k in set(which):
                check_readings(jobs[n_patches + k], scopes[n_patches + k], readings[n_patches + k])  # type: ignore[arg-type]
            for result, k in zip(results, which):
                result.baseline = readings[n_patches + k]
    finally:
        bar.close()
    return results


def batched_applies(jobs: Sequence[Job]) -> bool:
    """Whether the batched engine is exact on every model of ``jobs``; warns naming those it is not."""
    slow = [m for m in job_models(jobs) if not m.fast_path.batched]
    for model in slow:
        warnings.warn(f"{model.name}: the batched engine's fast path does not apply ({model.fast_path.reason}); "
                      "running the reference engine, one hooked forward per patch", stacklevel=3)
    return not slow


def baseline_scopes(jobs: Sequence[Job], scopes: Sequence[Patchscope]) -> tuple[list[Patchscope], list[int]]:
    """One unpatched scope per distinct target of ``jobs`` (its prompt and readout, no source or other
    intervention), and the index of each job's baseline among them."""
    found: dict[tuple, int] = {}
    out: list[Patchscope] = []
    which = []
    for job, scope in zip(jobs, scopes):
        soft = job.soft_input
        key = (id(job.model), job.tokens, None if soft is None else soft.key(), job.readout_position, job.readout)
        if key not in found:
            found[key] = len(out)
            readout = replace(scope.readout, relevancy=False) if isinstance(scope.readout, Generate) else scope.readout
            out.append(Patchscope(None, Target(scope.target.prompt, 0, model=job.model), readout))
        which.append(found[key])
    return out, which
