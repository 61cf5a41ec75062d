"""Fixtures of the tests of run directories and executors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchscopes.runs import LocalExecutor


def assert_same_readings(got, expected, *, exact: bool = False, atol: float = 1e-5) -> None:
    """Two lists of PatchResults agree: coordinates and readings (exactly, or probabilities within ``atol``)."""
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert (a.source_prompt, a.source_layer, a.source_position, a.target_layer) == \
            (b.source_prompt, b.source_layer, b.source_position, b.target_layer), f"result {k}"
        ra, rb = a.readings, b.readings
        assert ra.top_token_ids == rb.top_token_ids, f"result {k}: top tokens differ"
        assert ra.generated_text == rb.generated_text, f"result {k}: generated text differs"
        if exact:
            assert ra.top_probs == rb.top_probs, f"result {k}: probabilities differ"
        else:
            assert max(abs(p - q) for p, q in zip(ra.top_probs, rb.top_probs)) <= atol, f"result {k}"


@pytest.fixture
def same_readings():
    """:func:`assert_same_readings` as a fixture."""
    return assert_same_readings


def finished_shards(run_dir: Path, pattern: str = "shards/*.jsonl") -> int:
    """How many files of ``pattern`` a run directory holds (finished shards by default)."""
    return len(list(run_dir.glob(pattern)))


def kill_part_way(args: list[str], run_dir: Path, *, after: int = 1, pattern: str = "shards/*.jsonl",
                  timeout: float = 900) -> None:
    """Start ``args`` in a child process and SIGKILL it once ``run_dir`` holds ``after`` files of ``pattern``;
    fail if it ended by itself first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while finished_shards(run_dir, pattern) < after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{out[-2000:]}\n{err[-3000:]}"


@pytest.fixture
def killed():
    """:func:`kill_part_way` as a fixture."""
    return kill_part_way


@pytest.fixture
def count_files():
    """:func:`finished_shards` as a fixture."""
    return finished_shards


class CountingExecutor(LocalExecutor):
    """Runs shards here and counts them."""

    def __init__(self) -> None:
        self.shards = 0

    def run_shards(self, scopes, jobs, shards, **kwargs):
        self.shards += len(shards)
        yield from super().run_shards(scopes, jobs, shards, **kwargs)


@pytest.fixture
def counting_executor() -> type[CountingExecutor]:
    """An executor that runs shards here and counts them (``counting_executor()``, then ``.shards``)."""
    return CountingExecutor
