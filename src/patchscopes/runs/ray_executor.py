"""Shards on a Ray cluster: one actor per model replica (one GPU each where there are GPUs).

Each actor loads the models by name (:func:`patchscopes.load_model`), checks they are the models of the driver
(:func:`~patchscopes.runs.fingerprint.model_fingerprint`), and runs whole shards through the batched (or reference)
engine. A shard whose actor dies is run again on a fresh actor, so the results equal a single-process run.
Needs Ray (``pip install 'patchscopes[ray]'``); it is imported when the executor starts.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine import job_models
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel, load_model
from patchscopes.resolve import resolve_jobs
from patchscopes.runs.executors import execute_jobs
from patchscopes.runs.fingerprint import model_fingerprint
from patchscopes.scope import Patchscope


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads a model.

    Attributes:
        name: What :func:`patchscopes.load_model` takes: an embedded alias, a ``.gguf`` file, a model folder
            (on every node) or a hub id.
        dtype: ``float32``, ``bfloat16``...; by default the driver's model's dtype.
        device: ``cpu``, ``cuda`` or ``auto`` (a model over all of the worker's GPUs); by default ``cuda`` on a
            worker given GPUs (``auto`` if more than one), else ``cpu``.
    """

    name: str
    dtype: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class PortableScope:
    """A patchscope whose models are given by name, so it can travel to another process."""

    scope: Patchscope
    source_model: str | None
    target_model: str | None


def to_portable(scope: Patchscope) -> PortableScope:
    """``scope`` with its model objects replaced by their names."""
    src, tgt = scope.source, scope.target
    bare = dataclasses.replace(scope, source=None if src is None else dataclasses.replace(src, model=None),
                               target=dataclasses.replace(tgt, model=None))
    return PortableScope(bare, src.model.name if src is not None and src.model else None,
                         tgt.model.name if tgt.model else None)


class ModelWorker:
    """A Ray actor's state: models loaded by name on first use, and the engine run on shards."""

    def __init__(self, specs: Mapping[str, ModelSpec], threads: int | None = None) -> None:
        self.specs = dict(specs)
        self.models: dict[str, LanguageModel] = {}
        if threads:
            torch.set_num_threads(threads)

    def model(self, name: str) -> LanguageModel:
        """The model the driver calls ``name``, loaded once."""
        if name not in self.models:
            import ray

            spec = self.specs.get(name) or ModelSpec(name)
            gpus = ray.get_gpu_ids() if torch.cuda.is_available() else []
            device = spec.device or ("auto" if len(gpus) > 1 else "cuda" if gpus else "cpu")
            self.models[name] = load_model(spec.name, device=device, dtype=spec.dtype)
        return self.models[name]

    def identity(self, name: str) -> dict:
        """The identity of the model ``name`` as loaded here."""
        return model_fingerprint(self.model(name))

    def run(self, shard: Sequence[PortableScope], default_model: str | None, start: int, engine: str,
            budget) -> list:
        """Readings of one shard (its first job is job ``start`` of the run: sampling seeds depend on it)."""
        scopes = [dataclasses.replace(
            p.scope,
            source=None if p.scope.source is None else dataclasses.replace(
                p.scope.source, model=self.model(p.source_model) if p.source_model else None),
            target=dataclasses.replace(p.scope.target, model=self.model(p.target_model) if p.target_model else None),
        ) for p in shard]
        jobs = resolve_jobs(scopes, self.model(default_model) if default_model else None)
        for k, job in enumerate(jobs):
            job.index = start + k
        return execute_jobs(jobs, engine, budget)


class RayExecutor:
    """Runs shards on a pool of Ray actors, each holding one replica of the models.

    Example:
        >>> with RayExecutor(workers=4) as executor:   # a local Ray cluster; address="ray://host:10001" for one
        ...     df = ps.sweep(model, prompts, "token-identity", executor=executor, run_dir="runs/sweep")

    The models are given to the workers by name: a model loaded with ``load_model(NAME)`` is loaded there with
    ``load_model(NAME)`` in the same dtype; ``models`` says otherwise (a folder on the worker nodes, a device).
    Each worker's model must have the driver's identity (name, config, dtype, weights), or the run is refused.

    Args:
        workers: Actors to start (default: one per GPU of the cluster, or 2 CPU actors without GPUs).
        address: An existing Ray cluster's address; ``None`` starts a local one (or uses the one already
            started in this process with ``ray.init``).
        models: How workers load each model, by the driver model's name: a :class:`ModelSpec` or a name.
        gpus_per_worker: GPUs per actor (default: 1 where the cluster has GPUs, else 0); more than 1 loads the
            model with ``device="auto"`` over them.
        cpus_per_worker: CPUs per actor (also its torch threads on CPU).
        in_flight: Shards queued on each actor at once (2 keeps a GPU busy while the next shard travels).
        max_restarts: Dead actors replaced before the run gives up.
        start_timeout: Seconds the workers may take to start and load their models before the run gives up (a
            cluster without the CPUs or GPUs asked for would otherwise wait for ever).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        models: Mapping[str, ModelSpec | str] | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float = 1,
        in_flight: int = 2,
        max_restarts: int = 3,
        start_timeout: float = 1800,
    ) -> None:
        if workers is not None and workers < 1:
            raise PatchscopesError(f"workers must be at least 1, got {workers}")
        if in_flight < 1:
            raise PatchscopesError(f"in_flight must be at least 1, got {in_flight}")
        self.workers = workers
        self.address = address
        self.models = {k: v if isinstance(v, ModelSpec) else ModelSpec(v) for k, v in (models or {}).items()}
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.in_flight = in_flight
        self.max_restarts = max_restarts
        self.start_timeout = start_timeout
        self.actors: list = []
        self.restarts = 0
        self._specs: dict[str, ModelSpec] = {}
        self._identities: dict[str, dict] = {}
        self._started_ray = False
        self._actor_class = None

    # -- the pool ----------------------------------------------------------------------------------------------
    def _ray(self):
        try:
            import ray
        except ImportError as err:
            raise PatchscopesError("the Ray executor needs Ray, which is not installed",
                                   hint="pip install 'patchscopes[ray]'") from err
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(log_to_driver=False)
            self._started_ray = True
        return ray

    def _start(self, models: Sequence[LanguageModel]) -> None:
        ray = self._ray()
        for model in models:
            if model.name not in self._specs:
                spec = self.models.get(model.name) or ModelSpec(model.name)
                if spec.dtype is None:
                    spec = dataclasses.replace(spec, dtype=str(model.dtype).removeprefix("torch."))
                self._specs[model.name] = spec
                self._identities[model.name] = model_fingerprint(model)
                self._check(self.actors, [model.name])  # a model added after the pool started
        if self.actors:
            return
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        workers = self.workers or (int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus else 2)
        self._actor_class = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=gpus)(ModelWorker)
        self.actors = self._new_actors(max(1, workers))

    def _new_actors(self, n: int) -> list:
        """``n`` new actors, each checked to hold the driver's models."""
        actors = [self._actor_class.remote(self._specs, threads=max(1, int(self.cpus_per_worker))) for _ in range(n)]
        self._check(actors, list(self._specs))
        return actors

    def _check(self, actors: Sequence, names: Sequence[str]) -> None:
        ray = self._ray()
        asked = [(name, actor.identity.remote(name)) for actor in actors for name in names]
        try:
            identities = ray.get([ref for _, ref in asked], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError as err:
            raise PatchscopesError(
                f"{len(actors)} Ray worker(s) did not start and load their models within {self.start_timeout:g} s",
                hint=f"the cluster may lack the resources asked for ({self.cpus_per_worker} CPUs and "
                f"{self.gpus_per_worker if self.gpus_per_worker is not None else 'one GPU where there are'} GPUs per "
                "worker; see `ray status`): use fewer workers",
            ) from err
        for (name, _), identity in zip(asked, identities):
            if identity != self._identities[name]:
                differ = sorted(k for k in identity if identity[k] != self._identities[name].get(k))
                raise PatchscopesError(
                    f"a Ray worker loaded {self._specs[name].name!r} as a model other than the driver's {name!r} "
                    f"({', '.join(differ)} differ)",
                    hint="load the same model on the driver, or tell the workers how: "
                    "RayExecutor(models={NAME: ModelSpec(...)})",
                )

    def shutdown(self) -> None:
        """Stop the actors (and the local Ray cluster, if this executor started it)."""
        if not self.actors and not self._started_ray:
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- running -----------------------------------------------------------------------------------------------
    def run_shards(self, scopes, jobs, shards, *, model, engine, budget, progress=None):
        """See :meth:`patchscopes.runs.Executor.run_shards`: shards go to the actors, readings come back as each
        shard finishes; a shard whose actor died is queued again and the actor replaced."""
        models = job_models(jobs)
        self._start(models)
        ray = self._ray()
        default = model.name if model is not None else None
        queue = deque(shards)
        pending: dict = {}  # object ref -> (shard, actor)

        def load(actor) -> int:
            return sum(1 for _, a in pending.values() if a is actor)

        def submit() -> None:
            while queue:
                free = [a for a in self.actors if load(a) < self.in_flight]
                if not free:
                    return
                actor = min(free, key=load)
                shard = queue.popleft()
                portable = [to_portable(s) for s in scopes[shard.start: shard.stop]]
                pending[actor.run.remote(portable, default, shard.start, engine, budget)] = (shard, actor)

        submit()
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            shard, actor = pending.pop(ref)
            try:
                readings = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                queue.appendleft(shard)
                if actor in self.actors:
                    self._replace(actor, err)
                submit()
                continue
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, PatchscopesError) else err) from None
            if progress is not None:
                progress.update(shard.stop - shard.start)
            submit()
            yield shard, readings

    def _replace(self, actor, err: BaseException) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise PatchscopesError(f"{self.restarts} Ray workers died; the last: {err}",
                                   hint="check the workers' memory and logs (ray status), or use fewer workers")
        self.actors[self.actors.index(actor)] = self._new_actors(1)[0]

    def __repr__(self) -> str:
        return f"RayExecutor(workers={self.workers}, address={self.address!r})"
