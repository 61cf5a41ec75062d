"""The explorer's models: each loaded once per process, each with its own queue of work.

A :class:`ModelWorker` owns one model and one thread; jobs on that model run there one at a time, in the
order they were asked for, so two requests never run on the same model at once. A job whose request has
gone away (its ``cancel`` event is set) is dropped when its turn comes instead of running.
:class:`ModelPool` maps the names the browser may ask for to workers, loading each model on first use.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel

T = TypeVar("T")


class Cancelled(Exception):
    """A queued job was dropped because its request went away before its turn."""


class ModelWorker:
    """One model and the queue of jobs on it, run one at a time on one thread.

    Attributes:
        name: The name the browser uses for the model.
        model: The loaded model.
        jobs_run: How many jobs have run to the end (for tests and the status line).
        jobs_dropped: How many queued jobs were dropped because their request had gone away.
    """

    def __init__(self, name: str, model: LanguageModel) -> None:
        self.name = name
        self.model = model
        self.jobs_run = 0
        self.jobs_dropped = 0
        self._waiting = 0
        self._count_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"patchscopes-{name}")

    @property
    def waiting(self) -> int:
        """Jobs queued or running on this model right now."""
        return self._waiting

    async def call(self, fn: Callable[..., T], *args: Any, cancel: threading.Event | None = None) -> T:
        """Run ``fn(model, *args)`` after the jobs queued before it and return its result.

        Args:
            fn: The work; it gets the model first.
            args: Its other arguments.
            cancel: When set before the job's turn comes, the job is dropped. Cancelling the awaiting task
                also takes a job that has not started off the queue.

        Raises:
            Cancelled: The job was dropped.
        """

        def job() -> T:
            try:
                if cancel is not None and cancel.is_set():
                    self.jobs_dropped += 1
                    raise Cancelled(f"dropped a job on {self.name}: its request went away")
                result = fn(self.model, *args)
                self.jobs_run += 1
                return result
            finally:
                with self._count_lock:
                    self._waiting -= 1

        with self._count_lock:
            self._waiting += 1
        future = self._executor.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancel():  # never started: it will not run, so it no longer waits
                with self._count_lock:
                    self._waiting -= 1
                self.jobs_dropped += 1
            raise

    def close(self) -> None:
        """Stop the worker thread after the job in progress; queued jobs are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)


ModelSource = LanguageModel | Callable[[], LanguageModel]


class ModelPool:
    """The models the explorer serves, by name, each loaded once and given a :class:`ModelWorker`.

    Only these names are ever loaded: a name from the browser is looked up here, never passed to
    :func:`~patchscopes.models.load_model` or the file system.

    Args:
        models: Name → a loaded model, or a function that loads it (called once, on first use).
            The first name is the default.

    Raises:
        PatchscopesError: ``models`` is empty.
    """

    def __init__(self, models: dict[str, ModelSource]) -> None:
        if not models:
            raise PatchscopesError("the explorer needs at least one model", hint="pass --model NAME")
        self._sources = dict(models)
        self._workers = {name: ModelWorker(name, m) for name, m in models.items() if isinstance(m, LanguageModel)}
        self._load_lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """The models' names, the default first."""
        return list(self._sources)

    @property
    def default(self) -> str:
        """The name of the default model."""
        return self.names[0]

    def loaded(self, name: str) -> ModelWorker | None:
        """The worker of ``name`` if its model is loaded, else ``None``."""
        return self._workers.get(name)

    def worker(self, name: str) -> ModelWorker:
        """The worker of ``name``, loading the model on first use (blocking: call it off the event loop).

        Raises:
            KeyError: ``name`` is not one of :attr:`names`.
            PatchscopesError: The model cannot be loaded.
        """
        if name not in self._sources:
            raise KeyError(name)
        with self._load_lock:
            if name not in self._workers:
                source = self._sources[name]
                model = source if isinstance(source, LanguageModel) else source()
                self._workers[name] = ModelWorker(name, model)
        return self._workers[name]

    def close(self) -> None:
        """Stop every worker thread."""
        for worker in self._workers.values():
            worker.close()
