"""A run killed with SIGKILL part-way, then resumed from its run directory, equals a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

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
            time.sleep(0.3)

ps.sweep(tiny_model("llama"), {PROMPTS!r}, "token-identity", run_dir=sys.argv[1], shard_size={SHARD},
         executor=Slow())
print("finished")
"""


def finished_shards(run_dir: Path) -> int:
    return len(list((run_dir / "shards").glob("*.jsonl"))) if (run_dir / "shards").is_dir() else 0


def kill_part_way(args: list[str], run_dir: Path, *, after: int, timeout: float = 600) -> subprocess.CompletedProcess:
    """Start ``args``, SIGKILL it once ``after`` shards are in ``run_dir``; the process it was."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while finished_shards(run_dir) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{out}\n{err[-2000:]}"
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow  # a child process that imports torch: ~15 s on a busy machine
def test_a_sweep_killed_part_way_resumes_to_the_uninterrupted_result(tmp_path, tiny_llama):
    run_dir = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    kill_part_way([sys.executable, str(script), str(run_dir)], run_dir, after=2)
    total = -(-len(ps.plan_sweep(tiny_llama, PROMPTS, "token-identity")) // SHARD)
    done = finished_shards(run_dir)
    assert 2 <= done < total
    resumed = ps.sweep(tiny_llama, PROMPTS, "token-identity", run_dir=run_dir, shard_size=SHARD)
    assert finished_shards(run_dir) == total
    never_killed = ps.sweep(tiny_llama, PROMPTS, "token-identity", run_dir=tmp_path / "other", shard_size=SHARD)
    pd.testing.assert_frame_equal(resumed, never_killed)
