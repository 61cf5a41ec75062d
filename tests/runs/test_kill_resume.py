"""A run killed with SIGKILL part-way, then resumed from its run directory, equals a run never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import patchscopes as ps

PROMPTS = ["The cat sat on the mat", "Paris is in France", "One two three four"]
SHARD = 4

# The child runs the sweep slowly (a pause after each shard) so the kill lands part-way.
CHILD = f"""
import sys, time
import patchscopes as ps
from patchscopes.runs import LocalExecutor
from patchscopes.testing import tiny_model

class Slow(LocalExecutor):
    def run_shards(self, *args, **kwargs):
        for item in super().run_shards(*args, **kwargs):
            yield item
            time.sleep(1.0)

ps.sweep(tiny_model("llama"), {PROMPTS!r}, "token-identity", run_dir=sys.argv[1], shard_size={SHARD},
         executor=Slow())
print("finished")
"""


@pytest.mark.slow  # a child process that imports torch: ~15 s on a busy machine
def test_a_sweep_killed_part_way_resumes_to_the_uninterrupted_result(tmp_path, tiny_llama, killed, count_files):
    run_dir = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    killed([sys.executable, str(script), str(run_dir)], run_dir, after=2)
    total = -(-len(ps.plan_sweep(tiny_llama, PROMPTS, "token-identity")) // SHARD)
    assert 2 <= count_files(run_dir) < total
    resumed = ps.sweep(tiny_llama, PROMPTS, "token-identity", run_dir=run_dir, shard_size=SHARD)
    assert count_files(run_dir) == total
    never_killed = ps.sweep(tiny_llama, PROMPTS, "token-identity", run_dir=tmp_path / "other", shard_size=SHARD)
    pd.testing.assert_frame_equal(resumed, never_killed)


DATA = Path(os.environ.get("PATCHSCOPES_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
RELATIONS = [DATA / "patchscopes_preprocessed" / "factual" / f"{name}.tsv"
             for name in ("country_currency", "food_from_country")]


def cli(*args: str) -> list[str]:
    """The command line of ``patchscopes ARGS`` in a child process."""
    return [sys.executable, "-c", "from patchscopes.cli import main; main()", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cli(*args), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow  # SmolLM2 generates for three runs of the experiment: minutes
@pytest.mark.skipif(not all(p.is_file() for p in RELATIONS), reason="the paper's preprocessed relations are absent")
def test_eval_attributes_killed_part_way_resumes_to_the_uninterrupted_result(tmp_path, killed, count_files):
    args = ["eval", "attributes", "--model", "smollm2-135m", "--relations", *map(str, RELATIONS),
            "--max-samples", "6", "--source-layers", "0:30:10", "--target-layers", "0,3", "--max-new-tokens", "10"]
    run_dir = tmp_path / "run"
    killed(cli(*args, "--run-dir", str(run_dir), "--json", str(tmp_path / "killed.json")), run_dir, after=1)
    assert count_files(run_dir) >= 1 and not (tmp_path / "killed.json").exists()
    run_cli(*args, "--run-dir", str(run_dir), "--json", str(tmp_path / "resumed.json"))
    run_cli(*args, "--run-dir", str(tmp_path / "other"), "--json", str(tmp_path / "whole.json"))

    def records(name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((tmp_path / name).read_text())]

    assert records("resumed.json") == records("whole.json")
    assert any(r["level"] == "pair" for r in records("whole.json"))


@pytest.mark.slow  # a child process and two trainings: ~30 s
def test_fit_lens_tuned_killed_part_way_resumes(tmp_path, tiny_llama, killed):
    from safetensors.torch import load_file

    tiny_llama.hf.save_pretrained(tmp_path / "model")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Paragraph {k}: the quick brown fox jumps over the lazy dog, again and again."
                                  for k in range(40)))
    args = ["fit-lens", "--model", str(tmp_path / "model"), "--text", str(text), "--kind", "tuned", "--steps", "400",
            "--samples", "200", "--max-tokens", "32", "--batch-size", "16"]
    run_dir = tmp_path / "run"
    killed(cli(*args, "--run-dir", str(run_dir), "--out", str(tmp_path / "killed")), run_dir,
           pattern="tuned-lens-checkpoint.safetensors")
    assert not (tmp_path / "killed" / "lens.safetensors").exists()
    resumed = run_cli(*args, "--run-dir", str(run_dir), "--out", str(tmp_path / "resumed"))
    assert "resuming" in resumed.stdout
    run_cli(*args, "--run-dir", str(tmp_path / "other"), "--out", str(tmp_path / "whole"))
    a = load_file(tmp_path / "resumed" / "lens.safetensors")
    b = load_file(tmp_path / "whole" / "lens.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
