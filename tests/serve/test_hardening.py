"""The explorer against bad requests: every one a JSON 4xx (never a 500, never plain text), a JSON 500 for a
real failure, hosts compared without case, cross-origin POSTs refused, and ``serve --host`` checked first."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")

import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import patchscopes.serve.app as serve_app
from patchscopes.cli import app as cli_app
from patchscopes.serve import Limits, create_app
from patchscopes.serve.guard import problem
from patchscopes.serve.streaming import sse

LOCAL = "http://127.0.0.1:8765"
PROMPT = "Hi you"
JSON = {"content-type": "application/json"}
HUGE = "0:99999999999999999999"


def raw(body: dict) -> bytes:
    """``body`` as JSON bytes, with any lone surrogate written as its ``\\u`` escape (as a client would send it)."""
    return json.dumps(body).encode("ascii")


def chunked(data: bytes, size: int = 64 * 1024):
    """``data`` as a generator: the client sends it chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start: start + size]


QUERIES = ["/api/inspect", "/api/inspect/stream"]
VECTOR = ["/api/describe-vector"]  # the tiny models' width is 32
OVERSIZED = raw({"prompt": PROMPT, "layers": "0", "positions": "1"})[:-1] + b" " * (1 << 20) + b"}"  # valid JSON
# (name, paths, body bytes or a generator factory, headers, expected status); every row also asserts a JSON body
BAD = [
    ("huge layer range", QUERIES, raw({"prompt": PROMPT, "layers": HUGE}), JSON, 400),
    ("layer range of 10^13", QUERIES, raw({"prompt": PROMPT, "layers": "0:10000000000000"}), JSON, 400),
    ("position range of 10^13", QUERIES, raw({"prompt": PROMPT, "positions": "0:10000000000000"}), JSON, 400),
    ("huge target layer range", QUERIES, raw({"prompt": PROMPT, "layers": "0", "positions": "0", "target_layer": HUGE}),
     JSON, 400),
    ("huge single layer", QUERIES, raw({"prompt": PROMPT, "layers": "99999999999999999999"}), JSON, 400),
    # "1 2" is refused by the spec parser (specs.py, issue 23): it used to run layer 12
    ("a space inside a number", QUERIES, raw({"prompt": PROMPT, "layers": "1 2"}), JSON, 400),
    ("a lone surrogate in the prompt", QUERIES, raw({"prompt": "Hi \ud800 you"}), JSON, 400),
    ("a lone surrogate in the target prompt", QUERIES,
     raw({"prompt": PROMPT, "scope": "description", "target_prompt": "x \udfff", "layers": "0", "positions": "0"}),
     JSON, 400),
    ("a lone surrogate in a SPEC", QUERIES, raw({"prompt": PROMPT, "layers": "\ud800"}), JSON, 400),
    ("a lone surrogate in a field name", QUERIES, raw({"prompt": PROMPT, "\ud800": 1}), JSON, 422),
    ("a lone surrogate in the model name", QUERIES, raw({"prompt": PROMPT, "model": "\ud800"}), JSON, 404),
    ("malformed JSON", QUERIES, b'{"prompt": "Hi', JSON, 422),
    ("bytes that are not UTF-8", QUERIES, b'{"prompt": "\xff\xfe"}', JSON, 400),
    ("a JSON array", QUERIES, b"[1, 2]", JSON, 422),
    ("JSON null", QUERIES, b"null", JSON, 422),
    ("an empty body", QUERIES, b"", JSON, 422),
    ("not sent as JSON", QUERIES, raw({"prompt": PROMPT}), {"content-type": "text/plain"}, 422),
    ("a prompt that is a number", QUERIES, raw({"prompt": 5}), JSON, 422),
    ("layers as a list", QUERIES, raw({"prompt": PROMPT, "layers": [1, 2]}), JSON, 422),
    ("top_k as a word", QUERIES, raw({"prompt": PROMPT, "top_k": "many"}), JSON, 422),
    ("top_k of 10^30", QUERIES, raw({"prompt": PROMPT, "top_k": 10**30}), JSON, 413),
    ("top_k of 0", QUERIES, raw({"prompt": PROMPT, "top_k": 0}), JSON, 422),
    ("max_new_tokens as a float", QUERIES, raw({"prompt": PROMPT, "max_new_tokens": 1.5}), JSON, 422),
    ("baseline as a list", QUERIES, raw({"prompt": PROMPT, "baseline": [1]}), JSON, 422),
    ("an unknown field", QUERIES, raw({"prompt": PROMPT, "layer": "0"}), JSON, 422),
    ("an unknown preset", QUERIES, raw({"prompt": PROMPT, "scope": "nope"}), JSON, 400),
    ("an unknown model", QUERIES, raw({"prompt": PROMPT, "model": "nope"}), JSON, 404),
    ("an unknown engine", QUERIES, raw({"prompt": PROMPT, "engine": "fast"}), JSON, 422),
    ("a body over the limit", QUERIES, OVERSIZED, JSON, 413),
    ("a chunked body over the limit", QUERIES, lambda: chunked(OVERSIZED), JSON, 413),
    ("a Content-Length over the limit", QUERIES, b"{}", {**JSON, "content-length": str(1 << 30)}, 413),  # not read
    ("a Content-Length that is no number", QUERIES, b"", {**JSON, "content-length": "abc"}, 400),
    ("describe a huge layer", ["/api/describe"], raw({"prompt": PROMPT, "layer": 10**30, "position": 0}), JSON, 400),
    ("describe a lone surrogate", ["/api/describe"], raw({"prompt": "\ud800", "layer": 0, "position": 0}), JSON, 400),
    ("describe an unknown preset", ["/api/describe"], raw({"prompt": PROMPT, "layer": 0, "position": 0,
                                                           "scope": "nope"}), JSON, 400),
    ("describe without a position", ["/api/describe"], raw({"prompt": PROMPT, "layer": 0}), JSON, 422),
    ("a vector at a huge layer", VECTOR, raw({"vector": [0.1] * 32, "layer": 10**30}), JSON, 400),
    ("a vector of infinities", VECTOR, raw({"vector": "1e999 " * 32, "layer": 0}), JSON, 400),
    ("a vector of NaN", VECTOR, b'{"vector": [' + b", ".join([b"NaN"] * 32) + b'], "layer": 0}', JSON, 400),
    ("a vector that is a lone surrogate", VECTOR, raw({"vector": "\ud800", "layer": 0}), JSON, 400),
    ("a vector of 400,000 numbers", VECTOR, raw({"vector": "0 " * 400_000, "layer": 0}), JSON, 400),
    ("a vector over the body limit", VECTOR, raw({"vector": "0 " * 600_000, "layer": 0}), JSON, 413),
    ("a vector holding a huge integer", VECTOR, raw({"vector": [10**400] + [0.1] * 31, "layer": 0}), JSON, 422),
]
CASES = [pytest.param(path, body, headers, status, id=f"{name} {path}")
         for name, paths, body, headers, status in BAD for path in paths]


@pytest.fixture
def strict(pool):
    """A test client that raises any exception the app lets escape (none may), on the default limits."""
    return TestClient(create_app(pool), base_url=LOCAL)


@pytest.mark.parametrize(("path", "body", "headers", "status"), CASES)
def test_every_bad_request_gets_a_json_4xx(strict, path, body, headers, status):
    answer = strict.post(path, content=body() if callable(body) else body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.text
    data = answer.json()
    assert set(data) == {"error", "hint"} and data["error"].strip() and data["hint"].strip(), data
    assert "Traceback" not in data["error"]
    assert answer.headers["x-content-type-options"] == "nosniff"  # the guard's headers on every error too


@pytest.mark.parametrize(("method", "path", "status"), [
    ("get", "/static/%ed%a0%80", 404), ("get", "/static/%ff", 404), ("get", "/static/%00", 404),
    ("get", "/static/" + "a" * 5000, 404), ("get", "/%ff", 404), ("get", "/api/nope", 404),
    ("get", "/api/inspect", 405), ("put", "/api/inspect", 405), ("delete", "/api/describe", 405),
    ("options", "/api/inspect", 405), ("post", "/api/models", 405),
])
def test_every_bad_path_or_method_gets_a_json_4xx(strict, method, path, status):
    answer = getattr(strict, method)(path)
    assert answer.status_code == status and answer.headers["content-type"] == "application/json", answer.text
    assert answer.json()["error"] and answer.json()["hint"], answer.json()


def test_the_limits_are_listed_with_the_body_size_and_the_queue(strict):
    limits = strict.get("/api/models").json()["limits"]
    assert limits["max_body_bytes"] == 1 << 20 and limits["max_queued"] == 64


def test_a_body_just_under_the_limit_is_read(pool):
    client = TestClient(create_app(pool, limits=Limits(max_body_bytes=200)), base_url=LOCAL)
    body = raw({"prompt": PROMPT, "layers": "0", "positions": "1", "scope": "logit-lens"})
    padded = body[:-1] + b" " * (200 - len(body)) + b"}"
    assert client.post("/api/inspect", content=padded, headers=JSON).status_code == 200
    over = client.post("/api/inspect", content=padded[:-1] + b" }", headers=JSON)
    assert over.status_code == 413 and "200 bytes" in over.json()["error"]


def test_a_failure_that_is_not_the_requests_fault_is_a_json_500(strict, monkeypatch):
    def broken(model, query):
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(serve_app, "inspect_records", broken)
    answer = strict.post("/api/inspect", json={"prompt": PROMPT})
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert "RuntimeError: a bug in the engine" in answer.json()["error"] and "bug" in answer.json()["hint"]
    assert "default-src 'self'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize(("raised", "status"), [(OverflowError("int too large"), 400), (TypeError("not text"), 400),
                                                 (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogate"), 400),
                                                 (MemoryError(), 400), (ValueError("a lone \ud800 in it"), 400)])
def test_what_reading_a_query_raises_is_a_400(strict, monkeypatch, raised, status):
    def plan(*args):
        raise raised

    monkeypatch.setattr(serve_app, "plan_query", plan)
    for path in QUERIES:
        answer = strict.post(path, json={"prompt": PROMPT})
        assert answer.status_code == status, answer.text
        assert answer.json()["error"].startswith("the query"), answer.json()


def test_an_error_quoting_a_lone_surrogate_is_still_json():
    answer = problem(400, "bad \ud800 text", hint="no \udfff")
    assert json.loads(answer.body) == {"error": "bad \\ud800 text", "hint": "no \\udfff"}


def test_a_stream_event_quoting_a_lone_surrogate_is_still_utf8():
    event = sse("error", {"error": "bad \ud800 text"}).encode("utf-8")  # as the response sends it
    assert json.loads(event.decode().split("data: ", 1)[1]) == {"error": "bad \ud800 text"}  # a JSON escape


def test_running_out_of_memory_is_a_413(strict, monkeypatch):
    def huge(model, query):
        raise MemoryError

    monkeypatch.setattr(serve_app, "inspect_records", huge)
    answer = strict.post("/api/inspect", json={"prompt": PROMPT})
    assert answer.status_code == 413 and "out of memory" in answer.json()["error"]


# -- the host and the origin ---------------------------------------------------------------------------------
def test_the_loopback_host_is_compared_without_case(pool):
    app = create_app(pool)
    client = TestClient(app, base_url=LOCAL)
    for host in ("LOCALHOST:8765", "LocalHost", "localhost:8765", "[::1]:8765"):  # sent as typed: httpx lowers URLs
        assert client.get("/api/models", headers={"host": host}).status_code == 200, host
    for host in ("localhost.evil.example:8765", "LOCALHOST.evil.example", "127.0.0.2:8765", ""):
        assert client.get("/api/models", headers={"host": host}).status_code == 403, host


BODY = {"prompt": PROMPT, "layers": "0", "positions": "1", "scope": "logit-lens"}


@pytest.mark.parametrize(("origin", "status"), [
    (None, 200),  # curl, scripts: no Origin
    (LOCAL, 200),  # the page itself
    ("http://127.0.0.1:8765/", 403),  # not an origin
    ("http://evil.example", 403),
    ("http://127.0.0.1:3000", 403),  # another port of this machine: same site, another origin
    ("http://localhost:8765", 403),  # another name of this machine is another origin
    ("null", 403),  # a sandboxed frame, a file
    ("", 403),
])
def test_a_cross_origin_post_is_refused_without_the_token(pool, origin, status):
    client = TestClient(create_app(pool), base_url=LOCAL)
    headers = {} if origin is None else {"origin": origin}
    for path in ["/api/inspect", "/api/inspect/stream", "/api/describe"]:
        body = {"prompt": PROMPT, "layer": 0, "position": 1} if path == "/api/describe" else BODY
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == status, (path, answer.text)
        if status == 403:
            assert "another origin" in answer.json()["error"]
    assert client.get("/api/models", headers=headers).status_code == 200  # reading is not refused


def test_origins_are_compared_without_case_and_default_ports(pool):
    app = create_app(pool)
    client = TestClient(app, base_url=LOCAL)
    for host, origin in [("localhost:8765", "http://LOCALHOST:8765"), ("LOCALHOST:8765", "http://localhost:8765"),
                         ("localhost", "http://localhost:80"), ("localhost:80", "http://localhost"),
                         ("[::1]:8765", "http://[::1]:8765")]:
        answer = client.post("/api/inspect", json=BODY, headers={"host": host, "origin": origin})
        assert answer.status_code == 200, (host, origin, answer.text)


def test_with_a_token_only_an_explicit_token_passes_a_cross_origin_post(pool):
    client = TestClient(create_app(pool, token="s3cret"), base_url="http://192.0.2.7:8765")
    foreign = {"origin": "http://192.0.2.7:3000"}
    assert client.get("/?token=s3cret").status_code == 200  # the client now holds the cookie
    assert client.post("/api/inspect", json=BODY).status_code == 200  # same origin: the cookie is enough
    refused = client.post("/api/inspect", json=BODY, headers=foreign)  # the cookie goes to any port of the host
    assert refused.status_code == 403 and "Bearer" in refused.json()["hint"]
    client.cookies.clear()
    assert client.post("/api/inspect", json=BODY, headers=foreign).status_code == 403
    assert client.post("/api/inspect", json=BODY).status_code == 401
    bearer = {**foreign, "authorization": "Bearer s3cret"}
    assert client.post("/api/inspect", json=BODY, headers=bearer).status_code == 200
    assert client.post("/api/inspect?token=s3cret", json=BODY, headers=foreign).status_code == 200
    for wrong in (b"Bearer wrong", "Bearer s3cr\xe9t".encode("latin-1"), b"s3cret"):
        assert client.post("/api/inspect", json=BODY, headers={**foreign, "authorization": wrong}).status_code == 403


# -- serve --host --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["bad..name", "-bad.example", "a b", "exämple.com", "", "x" * 64, ".", "bad_name"])
def test_a_bad_host_is_one_line_before_anything_loads(host, monkeypatch):
    loads = []
    monkeypatch.setattr("patchscopes.cli.options.Runtime.load", lambda self, name: loads.append(name))
    for extra in ([], ["--token", "s3cret"]):  # said before the token rule too
        result = CliRunner().invoke(cli_app, ["serve", "--host", host, "--model", "unused", "--port", "0", *extra],
                                    env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines[0].startswith("error: --host") and lines[1].startswith("hint:") and len(lines) == 2, lines
        assert "Traceback" not in result.output and not isinstance(result.exception, UnicodeError)
    assert loads == []


def test_the_loopback_host_in_capitals_needs_no_token(tiny_dir, monkeypatch):
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(app=self.config.app))
    result = CliRunner().invoke(cli_app, ["serve", "--host", "LOCALHOST", "--model", tiny_dir, "--port", "0"],
                                env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "http://localhost:" in result.output
    assert TestClient(served["app"], base_url="http://localhost").get("/api/models").status_code == 200
