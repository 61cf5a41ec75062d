"""``patchscopes describe-vectors``: the outputs on a tiny model, and bad input as one message with exit status 2."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from patchscopes.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WIDTH = 32  # the tiny models' hidden size


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def assert_exit_2(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def vector_file(tmp_path, vectors: torch.Tensor, name: str = "v.safetensors"):
    path = tmp_path / name
    save_file({"directions": vectors.contiguous()}, str(path))
    return path


def test_json_csv_html(tiny_dir, tmp_path):
    torch.manual_seed(0)
    path = vector_file(tmp_path, torch.randn(3, WIDTH))
    out = tmp_path / "out"
    result = invoke("describe-vectors", path, "--model", tiny_dir, "--layer", "1", "--features", "0:2",
                    "--scales", "2,8", "--max-new-tokens", "3", "--json", f"{out}.json", "--csv", f"{out}.csv",
                    "--html", f"{out}.html")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out.json").read_text())
    assert [(r["feature"], r["scale"]) for r in records] == [(0, 2.0), (0, 8.0), (1, 2.0), (1, 8.0)]
    assert sum(r["chosen"] for r in records) == 2
    assert (tmp_path / "out.csv").read_text().splitlines()[0].startswith("feature,scale,text")
    page = (tmp_path / "out.html").read_text()
    assert page.count("<h2>feature") == 2 and page.count("<tr class='chosen'>") == 2
    assert "2 vectors on" in result.output


@pytest.mark.parametrize(("vectors", "fragment"), [
    (torch.ones(2, 7), "width 32"),
    (torch.tensor([[float("nan")] * WIDTH]), "NaN or infinite"),
])
def test_bad_vectors_exit_2(tiny_dir, tmp_path, vectors, fragment):
    assert_exit_2(invoke("describe-vectors", vector_file(tmp_path, vectors), "--model", tiny_dir, "--layer", "0"),
                  fragment)


def test_bad_options_exit_2(tiny_dir, tmp_path):
    path = vector_file(tmp_path, torch.randn(4, WIDTH))
    assert_exit_2(invoke("describe-vectors", path, "--model", tiny_dir, "--layer", "0", "--features", "2:9"),
                  "feature")
    assert_exit_2(invoke("describe-vectors", path, "--model", tiny_dir, "--scales", "big"), "--scales 'big'")
    assert_exit_2(invoke("describe-vectors", path, "--model", tiny_dir), "no layer")
    assert_exit_2(invoke("describe-vectors", tmp_path / "none.pt", "--layer", "0"), "no vector file")
    assert_exit_2(invoke("describe-vectors", path, "--layer", "0", "--prompt", "poem"), "--prompt")
    assert_exit_2(invoke("describe-vectors", path, "--layer", "0", "--no-signals"), "--no-signals needs a fixed scale")


def test_no_signals_with_a_fixed_scale(tiny_dir, tmp_path):
    path = vector_file(tmp_path, torch.randn(2, WIDTH))
    out = tmp_path / "out.json"
    result = invoke("describe-vectors", path, "--model", tiny_dir, "--layer", "embeddings", "--scales", "1,3",
                    "--select", "3", "--no-signals", "--max-new-tokens", "2", "--json", out)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [r["scale"] for r in records if r["chosen"]] == [3.0, 3.0]
    assert all(r["entropy"] != r["entropy"] for r in records)  # NaN: not measured


def test_sae_folder_missing_a_tensor_exit_2(tmp_path):
    folder = tmp_path / "sae"
    folder.mkdir()
    save_file({"W_enc": torch.randn(WIDTH, 4), "W_dec": torch.randn(4, WIDTH), "b_dec": torch.zeros(WIDTH)},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": WIDTH, "d_sae": 4, "architecture": "standard"}))
    assert_exit_2(invoke("describe-vectors", folder, "--layer", "0"), "has no tensor b_enc")
