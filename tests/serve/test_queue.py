"""Serving: one queue per model (work on a model never overlaps), and work dropped when its browser goes away."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")

import httpx

import patchscopes.serve.queries as queries
from patchscopes.serve import ModelPool, create_app
from patchscopes.serve.pool import Cancelled, ModelWorker

PROMPT = "Hi you"


class Overlap:
    """Wraps a function: records how many calls run at once per model, and makes each call last ``delay``."""

    def __init__(self, fn, delay: float) -> None:
        self.fn, self.delay = fn, delay
        self.active: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, model, *args, **kwargs):
        with self.lock:
            self.active[model.name] = self.active.get(model.name, 0) + 1
            self.most[model.name] = max(self.most.get(model.name, 0), self.active[model.name])
        try:
            time.sleep(self.delay)
            return self.fn(model, *args, **kwargs)
        finally:
            with self.lock:
                self.active[model.name] -= 1


def test_a_worker_runs_jobs_one_at_a_time_in_order(tiny_llama):
    worker = ModelWorker("m", tiny_llama)
    order: list[int] = []
    overlap = Overlap(lambda model, k: order.append(k) or k, delay=0.02)

    async def main():
        return await asyncio.gather(*(worker.call(overlap, k) for k in range(8)))

    try:
        assert asyncio.run(main()) == list(range(8))
    finally:
        worker.close()
    assert order == list(range(8)) and overlap.most["tiny-llama"] == 1
    assert worker.jobs_run == 8 and worker.waiting == 0


def test_a_job_whose_request_went_away_is_dropped(tiny_llama):
    worker = ModelWorker("m", tiny_llama)
    ran: list[str] = []

    async def main():
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            await worker.call(lambda model: ran.append("cancelled"), cancel=cancel)
        # a queued job whose awaiting task is cancelled leaves the queue without running
        slow = asyncio.ensure_future(worker.call(lambda model: time.sleep(0.3)))
        queued = asyncio.ensure_future(worker.call(lambda model: ran.append("queued")))
        await asyncio.sleep(0.05)
        queued.cancel()
        await slow
        await asyncio.sleep(0.05)

    try:
        asyncio.run(main())
    finally:
        worker.close()
    assert ran == [] and worker.jobs_dropped == 2 and worker.waiting == 0


def test_concurrent_requests_on_one_model_are_queued(tiny_llama, tiny_gpt2, monkeypatch, live_server):
    overlap = Overlap(queries.sweep, delay=0.05)
    monkeypatch.setattr(queries, "sweep", overlap)
    pool = ModelPool({"a": tiny_llama, "b": tiny_gpt2})
    answers: dict[int, httpx.Response] = {}
    bodies = [{"prompt": PROMPT, "model": model, "layers": "all", "positions": "-3:"} for model in "aab"]
    try:
        with live_server(create_app(pool, first_patches=1)) as url:
            def ask(k: int) -> None:
                answers[k] = httpx.post(f"{url}/api/inspect/stream", json=bodies[k], timeout=60)

            threads = [threading.Thread(target=ask, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        pool.close()
    assert overlap.most["tiny-llama"] == 1  # two requests on model a, never at once
    for k in range(3):
        assert answers[k].status_code == 200 and "event: done" in answers[k].text
        assert answers[k].text.count("event: cells") == 3


def test_a_stream_stops_when_its_browser_goes_away(tiny_llama, monkeypatch, live_server):
    monkeypatch.setattr(queries, "sweep", Overlap(queries.sweep, delay=0.4))
    pool = ModelPool({"a": tiny_llama})
    try:
        with live_server(create_app(pool, first_patches=1)) as url:
            body = {"prompt": PROMPT, "layers": "all", "positions": "all"}  # own next tokens + 3 chunks: 4 jobs
            with httpx.stream("POST", f"{url}/api/inspect/stream", json=body, timeout=30) as response:
                for line in response.iter_lines():
                    if line == "event: cells":
                        break  # the browser goes away after the first chunk
            time.sleep(2.5)  # far longer than the two remaining chunks would take
            worker = pool.loaded("a")
            assert worker is not None and worker.jobs_run < 4 and worker.waiting == 0
    finally:
        pool.close()


def test_a_queued_request_is_dropped_when_its_client_goes_away(tiny_llama, monkeypatch, live_server):
    monkeypatch.setattr(queries, "sweep", Overlap(queries.sweep, delay=1.0))
    pool = ModelPool({"a": tiny_llama})
    body = {"prompt": PROMPT, "layers": "0", "positions": "1"}
    try:
        with live_server(create_app(pool)) as url:
            first = threading.Thread(target=lambda: httpx.post(f"{url}/api/inspect", json=body, timeout=30))
            first.start()
            time.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):  # gives up while queued behind the first
                httpx.post(f"{url}/api/inspect", json=body, timeout=0.5)
            first.join()
            time.sleep(1.5)
            worker = pool.loaded("a")
            assert worker is not None and worker.jobs_run == 1 and worker.jobs_dropped == 1
    finally:
        pool.close()
