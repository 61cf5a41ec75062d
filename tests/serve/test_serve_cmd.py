"""``patchscopes serve``: its checks, what it serves, and (slow) the real command serving until it is stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")

import httpx
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from patchscopes.cli import app

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def test_any_host_but_the_loopback_needs_a_token():
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--model", "unused"], env=ENV)
    assert result.exit_code == 2
    assert "--token" in result.output and "Traceback" not in result.output


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--model", "unused"], env=ENV)
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output


def test_serve_loads_the_model_prints_the_url_and_runs_uvicorn_on_it(tiny_dir, monkeypatch):
    served = {}

    def run(self, sockets=None):  # instead of serving forever: note what would be served
        served.update(app=self.config.app, port=sockets[0].getsockname()[1])

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(app, ["serve", "--model", tiny_dir, "--port", "0", "--token", "s3cret"], env=ENV)
    assert result.exit_code == 0, result.output
    assert f"http://127.0.0.1:{served['port']}/?token=s3cret" in result.output
    client = TestClient(served["app"], base_url="http://127.0.0.1")
    assert client.get("/api/models").status_code == 401
    models = client.get("/api/models?token=s3cret").json()["models"]
    assert models == [{"name": tiny_dir, "default": True, "loaded": True, "num_layers": 3, "hidden_size": 32,
                       "waiting": 0}]


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, "s3cret"])
def test_serve_prints_its_url_and_serves_the_named_model(tiny_dir, token):
    args = ["serve", "--model", tiny_dir, "--port", "0"] + (["--token", token] if token else [])
    process = subprocess.Popen(
        [sys.executable, "-c", "from patchscopes.cli import main; main()", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV},
    )
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/)(\S*)", line)
            if found:
                break
        else:
            pytest.fail(f"no URL printed: {''.join(seen)}")
        base, query = found.groups()
        assert query == (f"?token={token}" if token else "")
        if token:
            assert httpx.get(f"{base}api/models").status_code == 401
        models = httpx.get(f"{base}api/models{query}", timeout=30).json()
        assert [m["name"] for m in models["models"]] == [tiny_dir] and models["models"][0]["loaded"]
        answer = httpx.post(f"{base}api/inspect{query}", json={"prompt": "Hi", "layers": "0", "positions": "-1"},
                            timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == 1
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
