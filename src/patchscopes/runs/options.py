"""How a run runs: :class:`RunOptions`, the one value every experiment and fit takes for its engine, batch
budget, progress bars, executor and run directory (the Python side of the CLI's ``--engine``,
``--batch-rows``/``--batch-tokens``, ``--run-dir``, ``--workers`` and ``--ray-address``).

An experiment's own arguments say *what* it computes; its ``options`` say *how*, and never change a result
(the batched and reference engines agree, a run directory only skips finished work, an executor only moves it)::

    fast = ps.RunOptions(progress=True, run_dir="runs/attributes")
    ps.evaluate_attributes(model, relations, options=fast)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from patchscopes.engine import BatchBudget, Engine, check_engine
from patchscopes.errors import PatchscopesError
from patchscopes.runs.executors import Executor
from patchscopes.runs.run_dir import RunDir


@dataclass(frozen=True)
class RunOptions:
    """How patches run; the defaults run them here, batched, without progress bars or a run directory.

    Attributes:
        engine: ``"batched"`` (shared work done once, rows batched) or ``"reference"`` (one plain hooked forward
            per patch: the ground truth).
        budget: Micro-batch limits of the batched engine (``None``: sized for the device).
        progress: Show progress bars.
        executor: Who runs the patches (``None``: this process; a :class:`~patchscopes.runs.RayExecutor` for a
            Ray cluster).
        run_dir: A run directory (a path or an open :class:`~patchscopes.runs.RunDir`) keeping finished shards,
            so that the same call again skips them.
    """

    engine: Engine = "batched"
    budget: BatchBudget | None = None
    progress: bool = False
    executor: Executor | None = None
    run_dir: RunDir | str | Path | None = None

    def __post_init__(self) -> None:
        check_engine(self.engine)
        if self.budget is not None and not isinstance(self.budget, BatchBudget):
            raise PatchscopesError(f"RunOptions.budget must be a BatchBudget, got {type(self.budget).__name__}",
                                   hint="e.g. RunOptions(budget=ps.BatchBudget(rows=32))")

    def with_(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` (e.g. ``options.with_(run_dir=None)`` for a step that keeps no shards)."""
        return replace(self, **changes)

    def run_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`patchscopes.run` and :func:`patchscopes.sweep` these options stand for."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


RUN_OPTION_NAMES = tuple(f.name for f in fields(RunOptions))
"""The keywords a :class:`RunOptions` holds (0.2's experiment functions took them one by one)."""


def run_options(options: RunOptions | None, legacy: dict[str, Any], where: str) -> RunOptions:
    """``options`` with 0.2's separate keywords (``engine=``, ``progress=``...) folded in, with a deprecation
    warning; ``where`` names the function for the messages.

    Raises:
        PatchscopesError: A keyword that is not a run option, or one given both ways.
    """
    unknown = sorted(set(legacy) - set(RUN_OPTION_NAMES))
    if unknown:
        raise PatchscopesError(f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}",
                               hint=f"run options are {', '.join(RUN_OPTION_NAMES)}, passed as options=RunOptions(...)")
    options = options if options is not None else RunOptions()
    if not isinstance(options, RunOptions):
        raise PatchscopesError(f"{where}(options=...) must be a RunOptions, got {type(options).__name__}",
                               hint="e.g. options=ps.RunOptions(progress=True)")
    if not legacy:
        return options
    warnings.warn(f"{where}({', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                  f"options=RunOptions({', '.join(f'{k}=...' for k in legacy)})", DeprecationWarning, stacklevel=3)
    return options.with_(**legacy)
