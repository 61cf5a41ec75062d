"""``POST /api/describe-vector``: a pasted or uploaded vector described at several scales, and bad ones refused."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")

import torch

import patchscopes as ps

WIDTH = 32  # the tiny models' hidden size


def a_vector(seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    return torch.randn(WIDTH).tolist()


def test_describe_a_pasted_vector(client, tiny_llama):
    vector = a_vector()
    pasted = "[" + ",\n".join(f"{x:.6f}" for x in vector) + "]"
    response = client.post("/api/describe-vector", json={"vector": pasted, "layer": 1, "scales": [2, 8],
                                                         "max_new_tokens": 3, "model": "tiny-llama"})
    assert response.status_code == 200, response.text
    records = response.json()
    assert [r["scale"] for r in records] == [2.0, 8.0] and sum(r["chosen"] for r in records) == 1
    expected = ps.describe_vectors(tiny_llama, torch.tensor([round(x, 6) for x in vector]), layer=1, scales=[2, 8],
                                   max_new_tokens=3)
    assert [r["text"] for r in records] == list(expected["text"])
    assert all(math.isfinite(r["entropy"]) and -1 <= r["self_similarity"] <= 1 for r in records)


def test_a_list_of_numbers_at_the_embeddings(client):
    response = client.post("/api/describe-vector", json={"vector": a_vector(1), "layer": "embeddings",
                                                         "max_new_tokens": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 8  # the automatic scales


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"vector": [1.0, 2.0], "layer": 0}, 400, "width 32"),
    ({"vector": "1 2 x3", "layer": 0}, 400, "'x3', which is not a number"),
    ({"vector": "", "layer": 0}, 400, "the vector is empty"),
    ({"vector": [0.0] * WIDTH, "layer": 0}, 400, "is zero"),
    ({"vector": [1.0] * WIDTH, "layer": 9}, 400, "layer"),
    ({"vector": [1.0] * WIDTH, "layer": 0, "scales": [1.0] * 17}, 413, "at most"),
    ({"vector": [1.0] * WIDTH, "layer": 0, "max_new_tokens": 1000}, 413, "at most"),
    ({"vector": [1.0] * WIDTH, "layer": 0, "model": "nope"}, 404, "no model 'nope'"),
    ({"vector": [1.0] * WIDTH, "layer": 0, "prompt": "poem"}, 422, "prompt"),
])
def test_bad_requests_are_json_4xx_with_a_hint(client, body, status, fragment):
    response = client.post("/api/describe-vector", json=body)
    assert response.status_code == status, response.text
    data = response.json()
    assert fragment in data["error"] and data.get("hint"), data


def test_nan_entries_are_refused(client):
    body = '{"vector": [' + ", ".join(["1.0"] * (WIDTH - 1) + ["NaN"]) + '], "layer": 0}'
    response = client.post("/api/describe-vector", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "NaN or infinite" in response.json()["error"]


def test_the_page_offers_it(client):
    page = client.get("/").text
    assert 'id="vector-text"' in page and 'id="vector-file"' in page and "/static/vectors.js" in page
    script = client.get("/static/vectors.js")
    assert script.status_code == 200 and "/api/describe-vector" in script.text
