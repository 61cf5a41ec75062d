"""``--run-dir`` on the command line: a second run reads the first's work and writes the same outputs, and a
run directory of other settings is refused."""

from __future__ import annotations

import json

from safetensors.torch import load_file
from typer.testing import CliRunner

from patchscopes.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def test_inspect_resumes_from_its_run_dir_and_refuses_other_settings(tiny_dir, tmp_path):
    args = ["inspect", "Hi you", "--model", tiny_dir, "--layers", "0,2", "--run-dir", str(tmp_path / "run")]
    first = invoke(*args, "--json", str(tmp_path / "a.json"))
    assert first.exit_code == 0, first.output
    shards = sorted((tmp_path / "run" / "shards").glob("*.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    second = invoke(*args, "--json", str(tmp_path / "b.json"))
    assert second.exit_code == 0, second.output
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # read back, not written again
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["command"] == "inspect" and manifest["settings"]["layers"] == "0,2"
    assert "json_path" not in manifest["settings"]  # outputs are not settings
    other = invoke(*args[:-2], "--layers", "0,1", "--run-dir", str(tmp_path / "run"))
    assert other.exit_code == 2 and "other settings" in other.output and "layers" in other.output


def test_fit_lens_affine_resumes_from_its_run_dir(tiny_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {k}: the quick brown fox jumps over the lazy dog." for k in range(30)))
    args = ["fit-lens", "--model", tiny_dir, "--text", str(text), "--samples", "300", "--max-tokens", "24",
            "--run-dir", str(tmp_path / "run")]
    assert invoke(*args, "--out", str(tmp_path / "a")).exit_code == 0
    state = tmp_path / "run" / "states" / "affine-lens.safetensors"
    stamp = state.stat().st_mtime_ns  # the sums of every batch: a second run only solves
    assert invoke(*args, "--out", str(tmp_path / "b")).exit_code == 0
    assert state.stat().st_mtime_ns == stamp
    a, b = load_file(tmp_path / "a" / "lens.safetensors"), load_file(tmp_path / "b" / "lens.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # (the configs differ in their timings)
    refused = invoke(*args[:-2], "--ridge", "0.5", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "c"))
    assert refused.exit_code == 2 and "ridge" in refused.output


def test_workers_need_ray(monkeypatch, tiny_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = invoke("inspect", "Hi you", "--model", tiny_dir, "--workers", "2")
    assert result.exit_code == 2 and "patchscopes[ray]" in result.output
