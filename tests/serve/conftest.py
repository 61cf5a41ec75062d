"""Fixtures of the explorer's tests: an app over tiny models, its test client, and a real server in a thread.

The test modules skip when the ``serve`` extra (fastapi, uvicorn) is not installed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

LOCAL = "http://127.0.0.1"


@pytest.fixture
def pool(tiny_llama, tiny_gpt2):
    """Two tiny models; a fresh pool (and fresh worker threads) per test."""
    from patchscopes.serve import ModelPool

    pool = ModelPool({"tiny-llama": tiny_llama, "tiny-gpt2": tiny_gpt2})
    yield pool
    pool.close()


@pytest.fixture
def client(pool):
    """A test client of the app over :func:`pool`, addressed to the loopback host, with small limits."""
    from fastapi.testclient import TestClient

    from patchscopes.serve import Limits, create_app

    return TestClient(create_app(pool, limits=Limits(max_patches=200, max_generations=20, max_prompt_tokens=40,
                                                      max_prompt_chars=100)), base_url=LOCAL)


@pytest.fixture(scope="session")
def live_server():
    """A function that serves an app for real (see :func:`serve_in_thread`), for tests that need sockets."""
    return serve_in_thread


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
