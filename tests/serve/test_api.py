"""The explorer's JSON API on tiny models: answers, the stream, limits, the token and bad input."""

from __future__ import annotations

import itertools
import json
import re

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")

import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app as cli_app
from patchscopes.serve import Limits, ModelPool, create_app
from patchscopes.serve.app import static_files
from patchscopes.serve.queries import InspectQuery, layer_chunks, plan_query

LOCAL = "http://127.0.0.1"
PROMPT = "Hi you"  # byte tokens after <bos>: 7 positions


def events(response) -> list[tuple[str, dict]]:
    """The server-sent events of a streamed answer, as (name, data)."""
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# -- answers -------------------------------------------------------------------------------------------------
def test_models_and_presets(client):
    data = client.get("/api/models").json()
    assert data["default"] == "tiny-llama"
    assert [m["name"] for m in data["models"]] == ["tiny-llama", "tiny-gpt2"]
    assert data["limits"]["max_patches"] == 200
    presets = client.get("/api/presets").json()["presets"]
    assert [p["name"] for p in presets] == list(ps.PRESETS)  # every preset, new ones included
    for p in presets:  # the explorer shows the served description under the scope: none is written in the page
        assert p["description"] == ps.PRESETS[p["name"]].description and p["description"].strip(), p["name"]
    generation = {p["name"] for p in presets if p["generation"]}
    assert generation == {name for name, p in ps.PRESETS.items() if isinstance(p.readout, ps.Generate)}
    assert "description" in generation
    description = next(p for p in presets if p["name"] == "description")
    assert description["placeholder"] == "x" and description["target_prompt"] == ps.ENTITY_DESCRIPTION_PROMPT


@pytest.mark.parametrize(("args", "body"), [
    (["--layers", "0,2", "--positions", "-3:", "--top-k", "4"], {"layers": "0,2", "positions": "-3:", "top_k": 4}),
    (["--scope", "logit-lens", "--positions", "1:3"], {"scope": "logit-lens", "positions": "1:3"}),
    (["--scope", "description", "--layers", "1", "--positions", "-1", "--max-new-tokens", "4"],
     {"scope": "description", "layers": "1", "positions": "-1", "max_new_tokens": 4}),
    (["--layers", "1", "--positions", "2", "--target-layer", "0,2", "--baseline", "--engine", "reference"],
     {"layers": "1", "positions": "2", "target_layer": "0,2", "baseline": True, "engine": "reference"}),
])
def test_inspect_answers_exactly_what_inspect_json_writes(tiny_dir, tmp_path, args, body):
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(cli_app, ["inspect", PROMPT, "--model", tiny_dir, *args, "--json", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    pool = ModelPool({"tiny": lambda: ps.load_model(tiny_dir)})
    try:
        answer = TestClient(create_app(pool), base_url=LOCAL).post("/api/inspect", json={"prompt": PROMPT, **body})
    finally:
        pool.close()
    assert answer.status_code == 200, answer.text
    assert answer.json() == json.loads(out.read_text())


def test_stream_gives_the_whole_sweep_chunk_by_chunk(client, tiny_llama):
    query = {"prompt": PROMPT, "layers": "all", "positions": "all", "top_k": 3}
    whole = client.post("/api/inspect", json=query).json()
    response = client.post("/api/inspect/stream", json=query)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response)
    names = [name for name, _ in got]
    assert names[0] == "plan" and names[1] == "model" and names[-1] == "done"
    plan = got[0][1]
    assert plan["tokens"] == tiny_llama.token_strings(tiny_llama.encode(PROMPT))
    assert plan["layers"] == [0, 1, 2] and plan["positions"] == list(range(7)) and plan["patches"] == 21
    cells = [data for name, data in got if name == "cells"]
    assert len(cells) > 1  # it streams: several chunks
    assert [c["done"] for c in cells] == sorted(c["done"] for c in cells) and cells[-1]["done"] == 21
    streamed = [rec for c in cells for rec in c["records"]]
    assert len(streamed) == len(whole)
    for a, b in zip(streamed, whole):
        assert {k: v for k, v in a.items() if k != "top_probs"} == {k: v for k, v in b.items() if k != "top_probs"}
        assert a["top_probs"] == pytest.approx(b["top_probs"], abs=1e-5)
    # the model's own next token at each position: its logits, i.e. the logit lens at the last layer
    own = got[1][1]["records"]
    logits = tiny_llama.hf(torch.tensor([tiny_llama.encode(PROMPT)])).logits[0]
    assert [r["top_token_ids"][0] for r in own] == logits.argmax(-1).tolist()
    assert got[-1][1]["patches"] == 21


def test_layer_chunks_grow_and_cover_the_layers_in_order(tiny_llama):
    plan = plan_query(tiny_llama, "t", InspectQuery(prompt=PROMPT), Limits())
    plan.layers, plan.patches = list(range(30)), 300  # as for a 30-layer model and 10 positions
    chunks = layer_chunks(plan, first_patches=16)
    assert [layer for chunk in chunks for layer in chunk] == list(range(30))
    assert len(chunks[0]) == 1 and len(chunks) <= 6
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(chunks[:-1]))


def test_describe_runs_a_generation_preset_on_one_cell(client, tiny_llama):
    answer = client.post("/api/describe", json={"prompt": PROMPT, "layer": 1, "position": -1, "max_new_tokens": 5})
    assert answer.status_code == 200, answer.text
    [record] = answer.json()
    expected = ps.sweep(tiny_llama, PROMPT, "description", layers=1, positions=-1, max_new_tokens=5)
    assert record["generated_text"] == expected["generated_text"].iloc[0]
    assert record["scope"] == "description" and record["source_layer"] == 1 and record["source_position"] == 6


def test_requests_name_the_model(client, tiny_gpt2):
    answer = client.post("/api/inspect", json={"prompt": PROMPT, "model": "tiny-gpt2", "layers": "0", "positions": "1"})
    assert answer.json()[0]["source_model"] == tiny_gpt2.name


# -- limits and bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"prompt": "x" * 101}, 413, "101 characters"),
    ({"prompt": "y" * 60}, 413, "tokens"),
    ({"prompt": PROMPT, "target_prompt": "x" * 101}, 413, "target prompt"),
    ({"prompt": PROMPT * 4, "layers": "all", "positions": "all", "target_layer": "all"}, 413, "patches"),
    ({"prompt": PROMPT, "scope": "description", "positions": "all"}, 413, "generating patches"),
    ({"prompt": PROMPT, "top_k": 51}, 413, "top_k"),
    ({"prompt": PROMPT, "max_new_tokens": 65}, 413, "max_new_tokens"),
    ({"prompt": "   "}, 400, "empty"),
    ({"prompt": PROMPT, "layers": "7"}, 400, "out of range"),
    ({"prompt": PROMPT, "positions": "a:b"}, 400, "invalid position spec"),
    ({"prompt": PROMPT, "scope": "nope"}, 400, "unknown scope"),
    ({"prompt": PROMPT, "scope": "description", "target_prompt": "no placeholder"}, 400, "placeholder"),
    ({"prompt": PROMPT, "model": "../../etc/passwd"}, 404, "no model"),
    ({"prompt": PROMPT, "layer": "0"}, 422, "layer"),
    ({"prompt": PROMPT, "top_k": "many"}, 422, "top_k"),
    ({"prompt": PROMPT, "engine": "fast"}, 422, "engine"),
    ({}, 422, "prompt"),
])
@pytest.mark.parametrize("path", ["/api/inspect", "/api/inspect/stream"])
def test_bad_requests_get_a_clear_4xx(client, path, body, status, fragment):
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    data = answer.json()
    assert fragment in data["error"], data
    assert "hint" in data


def test_describe_refuses_a_scope_that_does_not_generate(client):
    answer = client.post("/api/describe", json={"prompt": PROMPT, "layer": 0, "position": 0, "scope": "logit-lens"})
    assert answer.status_code == 400 and "does not generate" in answer.json()["error"]
    assert "description" in answer.json()["hint"]
    assert client.post("/api/describe", json={"prompt": PROMPT, "layer": 9, "position": 0}).status_code == 400


def test_a_body_that_is_not_json_is_refused(client):
    answer = client.post("/api/inspect", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "invalid request" in answer.json()["error"]


# -- the page and its files ----------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"', page.text):
        assert client.get(f"/static/{name}").status_code == 200, name
    assert client.get("/static/explorer.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/..%2F__init__.py").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_the_page_needs_no_network():
    """No file of the page loads anything from another origin (no CDN): everything is a package file."""
    for name, (content, _) in static_files().items():
        text = content.decode("utf-8")
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), name
        assert not re.search(r"""(?:import|fetch|url)\s*\(\s*["']?(?:https?:)?//""", text), name


# -- the token and the host ----------------------------------------------------------------------------------
@pytest.fixture
def guarded(pool):
    return TestClient(create_app(pool, token="s3cret"), base_url="http://192.0.2.7:8765")


def test_with_a_token_every_request_must_carry_it(guarded):
    for method, path in [("get", "/"), ("get", "/static/explorer.js"), ("get", "/api/models"),
                         ("post", "/api/inspect"), ("post", "/api/inspect/stream"), ("post", "/api/describe")]:
        answer = getattr(guarded, method)(path)
        assert answer.status_code == 401, path
        assert "token" in answer.json()["error"]
    assert guarded.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/models?token=wrong").status_code == 401
    assert guarded.get("/api/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    body = {"prompt": PROMPT, "layers": "0", "positions": "1"}
    stream = guarded.post("/api/inspect/stream", json=body, headers={"Authorization": "Bearer s3cret"})
    assert stream.status_code == 200 and "event: done" in stream.text


def test_the_printed_url_sets_a_cookie_the_page_then_uses(guarded):
    page = guarded.get("/?token=s3cret")
    assert page.status_code == 200
    assert "httponly" in page.headers["set-cookie"].lower() and "samesite=strict" in page.headers["set-cookie"].lower()
    # the client keeps the cookie: the page's scripts and its API calls now pass without the token in the URL
    assert guarded.get("/static/explorer.js").status_code == 200
    assert guarded.post("/api/inspect", json={"prompt": PROMPT, "layers": "0", "positions": "1"}).status_code == 200


def test_without_a_token_only_the_loopback_host_is_answered(pool):
    app = create_app(pool)
    for base in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"):
        assert TestClient(app, base_url=base).get("/api/models").status_code == 200, base
    foreign = TestClient(app, base_url="http://evil.example:8765").get("/api/models")
    assert foreign.status_code == 403 and "127.0.0.1" in foreign.json()["error"]
