"""Executors: who runs the shards of a run. :class:`LocalExecutor` runs them here, one after the other.

An executor receives the scopes, their resolved jobs and the shards still to run, and yields each shard's
readings as it finishes, in any order; :func:`patchscopes.run` writes each to the run directory as it arrives
and puts the results in order. :class:`~patchscopes.runs.ray_executor.RayExecutor` runs them on a Ray cluster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from patchscopes.engine import (
    BatchBudget,
    Job,
    Readings,
    check_engine,
    device_budget,
    job_models,
    run_batched,
    run_reference,
)
from patchscopes.models import LanguageModel
from patchscopes.runs.memory import memory_pieces
from patchscopes.runs.shards import Shard
from patchscopes.scope import Patchscope


def execute_jobs(jobs: Sequence[Job], engine: str, budget: BatchBudget | None, progress=None) -> list[Readings]:
    """Run resolved jobs in this process with ``engine`` (``"batched"`` or ``"reference"``).

    Without a ``budget``, the batched engine's is sized for where the models are
    (:func:`~patchscopes.engine.device_budget`: the CPU default, or large batches within the GPU's free memory).
    A budget with ``bytes`` also bounds the source states held at once: the jobs run in pieces
    (:func:`~patchscopes.runs.memory.memory_pieces`).
    """
    check_engine(engine)
    with torch.no_grad():
        if engine == "batched":
            if budget is None:
                budget = device_budget(job_models(jobs))
            return [r for piece in memory_pieces(jobs, budget) for r in run_batched(piece, budget, progress=progress)]
        return run_reference(jobs, progress=progress)


@runtime_checkable
class Executor(Protocol):
    """Runs shards of resolved patches and yields ``(shard, readings)`` as each finishes."""

    def run_shards(
        self,
        scopes: Sequence[Patchscope],
        jobs: Sequence[Job],
        shards: Sequence[Shard],
        *,
        model: LanguageModel | None,
        engine: str,
        budget: BatchBudget | None,
        progress=None,
    ) -> Iterator[tuple[Shard, list[Readings]]]:
        """Run ``jobs[shard.start:shard.stop]`` (resolved from the same ``scopes``) for every shard.

        Args:
            scopes: The patchscopes, as given (an executor elsewhere resolves its shards again from them).
            jobs: Their resolved jobs.
            shards: The shards to run.
            model: The model for scopes that name none.
            engine: ``"batched"`` or ``"reference"``.
            budget: Micro-batch limits of the batched engine (``None``: its default, or the device's).
            progress: A tqdm-like bar advanced per patch.
        """
        ...


class LocalExecutor:
    """Runs every shard in this process, in order (the default)."""

    def run_shards(self, scopes, jobs, shards, *, model, engine, budget, progress=None):
        """See :meth:`Executor.run_shards`."""
        for shard in shards:
            yield shard, execute_jobs(jobs[shard.start: shard.stop], engine, budget, progress)

    def __repr__(self) -> str:
        return "LocalExecutor()"
