"""Runs beyond one process: run directories that survive a kill, and executors that spread shards of work.

- :mod:`~patchscopes.runs.fingerprint`: stable fingerprints of settings, data and models (a model's identity).
- :mod:`~patchscopes.runs.run_dir`: :class:`RunDir`, a folder with a manifest (command, settings, model
  identity, data fingerprint) and one file per finished shard, written atomically (write, then rename); a run
  started again with the same folder skips the finished shards, and a folder written by another command, model,
  data or settings is refused; each shard carries checksums, and a damaged one is reported
  (:class:`CorruptShardWarning`) and redone.
- :mod:`~patchscopes.runs.options`: :class:`RunOptions`, how a run runs (engine, budget, progress, executor,
  run directory): the one value every experiment and fit takes.
- :mod:`~patchscopes.runs.shards`: jobs cut into shards keyed by their content, and readings to and from records.
- :mod:`~patchscopes.runs.executors`: the :class:`Executor` protocol and :class:`LocalExecutor` (in-process, the
  default); :mod:`~patchscopes.runs.ray_executor`: :class:`RayExecutor`, one Ray actor per model replica, models
  loaded by name on the workers, a dead worker's shards run again elsewhere (needs ``patchscopes[ray]``).

Imports: the root framework (:mod:`patchscopes.resolve`, :mod:`patchscopes.scope`, :mod:`patchscopes.results`),
:mod:`patchscopes.engine` and :mod:`patchscopes.models`; :mod:`patchscopes.runner` and everything above import
this package, never the reverse. Ray is imported only when a :class:`RayExecutor` starts.
"""

from patchscopes.runs.executors import Executor, LocalExecutor, execute_jobs
from patchscopes.runs.fingerprint import fingerprint, model_fingerprint
from patchscopes.runs.options import RunOptions, run_options
from patchscopes.runs.ray_executor import ModelSpec, RayExecutor
from patchscopes.runs.run_dir import CorruptShardWarning, RunDir, open_run_dir, settings_of
from patchscopes.runs.shards import DEFAULT_SHARD_SIZE

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "CorruptShardWarning",
    "Executor",
    "LocalExecutor",
    "ModelSpec",
    "RayExecutor",
    "RunDir",
    "RunOptions",
    "execute_jobs",
    "fingerprint",
    "model_fingerprint",
    "open_run_dir",
    "run_options",
    "settings_of",
]


def __getattr__(name: str):
    if name == "model_identity":  # 0.2's name for model_fingerprint
        import importlib

        return importlib.import_module("patchscopes.runs.fingerprint").model_identity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
