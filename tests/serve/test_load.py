"""The explorer under load, on a real server in a thread: 40 concurrent queries all answered with memory back
near its start, a full queue refused (429), and a stream whose client goes away freeing its model at once."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")

import httpx

import patchscopes.serve.queries as queries
from patchscopes.serve import Limits, ModelPool, create_app

PROMPT = "Hi you"
CONCURRENT = 40
MiB = 1 << 20


def rss() -> int:
    """This process's resident memory in bytes (psutil if installed, else ``/proc``)."""
    try:
        import psutil
    except ImportError:
        if not os.path.exists("/proc/self/statm"):
            pytest.skip("no way to measure memory here: pip install psutil")
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


class Slow:
    """Wraps ``sweep``: calls on ``prompt`` take ``delay`` seconds longer (others run at their own speed)."""

    def __init__(self, fn, delay: float, prompt: str = PROMPT) -> None:
        self.fn, self.delay, self.prompt = fn, delay, prompt
        self.calls = 0

    def __call__(self, model, prompt, *args, **kwargs):
        if prompt == self.prompt:
            self.calls += 1
            time.sleep(self.delay)
        return self.fn(model, prompt, *args, **kwargs)


def test_forty_concurrent_queries_are_all_answered_and_memory_comes_back(pool, live_server):
    body = {"prompt": PROMPT, "positions": "-3:"}  # every layer x the last 3 positions: 9 patches
    with live_server(create_app(pool)) as url:
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=120,
                                         limits=httpx.Limits(max_connections=CONCURRENT + 5)) as client:
                expected = (await client.post("/api/inspect", json=body)).json()
                gc.collect()
                start, peak, latencies, done = rss(), 0, [], asyncio.Event()

                async def probe() -> None:  # the cheap endpoint stays responsive while the queue is long
                    nonlocal peak
                    while not done.is_set():
                        began = time.perf_counter()
                        assert (await client.get("/api/models")).status_code == 200
                        latencies.append(time.perf_counter() - began)
                        peak = max(peak, rss())
                        await asyncio.sleep(0.02)

                prober = asyncio.ensure_future(probe())
                began = time.perf_counter()
                answers = await asyncio.gather(*(client.post("/api/inspect", json=body) for _ in range(CONCURRENT)))
                seconds = time.perf_counter() - began
                done.set()
                await prober
                gc.collect()
                return expected, answers, start, peak, rss(), seconds, latencies

        expected, answers, start, peak, end, seconds, latencies = asyncio.run(main())
    print(f"\n{CONCURRENT} concurrent /api/inspect: {seconds:.2f} s; /api/models p50 "
          f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms over {len(latencies)}; "
          f"RSS {start / MiB:.0f} MiB at the start, {peak / MiB:.0f} at the peak, {end / MiB:.0f} at the end")
    assert [a.status_code for a in answers] == [200] * CONCURRENT
    assert all(a.json() == expected for a in answers)  # each its own answer, none mixed up
    assert pool.loaded("tiny-llama").waiting == 0
    assert end - start < 100 * MiB, "memory did not come back near its start"
    assert statistics.median(latencies) < 2.0


def test_a_full_queue_is_refused_with_a_429(tiny_llama, monkeypatch, live_server):
    monkeypatch.setattr(queries, "sweep", Slow(queries.sweep, delay=1.5))
    pool = ModelPool({"a": tiny_llama})
    body = {"prompt": PROMPT, "layers": "0", "positions": "1"}
    answers: list[httpx.Response] = []
    try:
        with live_server(create_app(pool, limits=Limits(max_queued=2))) as url:
            threads = [threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/api/inspect", json=body,
                                                                                 timeout=30))) for _ in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 10
            while pool.loaded("a").waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = httpx.post(f"{url}/api/inspect", json=body, timeout=30)
            for t in threads:
                t.join()
            after = httpx.post(f"{url}/api/inspect", json={**body, "prompt": "Hi"}, timeout=30)
    finally:
        pool.close()
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/json"
    assert "queues at most 2" in refused.json()["error"] and refused.json()["hint"]
    assert [a.status_code for a in answers] == [200, 200] and after.status_code == 200


def test_a_closed_stream_frees_its_model_for_the_next_requests(tiny_llama, monkeypatch, live_server):
    """The stream's four jobs (own next tokens, three chunks) take 2 s each; its client leaves during the first.

    Only that first job may still run: the first request after it waits for that job at most, and the ones
    after it for nothing (were the stream still running, each would wait 2 s for one of its chunks: with the
    stream read to its end in a thread instead of closed, this test fails).
    """
    slow = Slow(queries.sweep, delay=2.0)
    monkeypatch.setattr(queries, "sweep", slow)
    pool = ModelPool({"a": tiny_llama})
    body = {"prompt": PROMPT, "layers": "all", "positions": "all"}
    waits = []
    try:
        with live_server(create_app(pool, first_patches=1)) as url:
            with httpx.stream("POST", f"{url}/api/inspect/stream", json=body, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and '"patches"' in line:  # the plan: its jobs are under way
                        break
            for _ in range(3):
                began = time.perf_counter()
                answer = httpx.post(f"{url}/api/inspect", json={"prompt": "Hi", "layers": "0", "positions": "-1"},
                                    timeout=30)
                waits.append(time.perf_counter() - began)
                assert answer.status_code == 200 and len(answer.json()) == 1
            worker = pool.loaded("a")
    finally:
        pool.close()
    print(f"\nafter the stream closed, the next requests waited {', '.join(f'{w:.2f}' for w in waits)} s; "
          f"stream jobs run: {slow.calls} of 4")
    assert waits[0] < 4.0, f"the first request waited {waits[0]:.1f} s"
    assert max(waits[1:]) < 1.5, f"requests waited {waits[1:]} s behind a stream nobody reads"
    assert slow.calls == 1 and worker.waiting == 0
