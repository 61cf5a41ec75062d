"""Memory bounds: ``--max-memory`` parsed strictly, honoured (the source states held at once and each batch stay
under it: measured as the peak resident memory of a sweep, the same results), and a bound the results alone
exceed refused."""

from __future__ import annotations

import gc
import json
import sys

import pytest
import torch
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.resolve import resolve_jobs
from patchscopes.runs import executors
from patchscopes.runs.memory import memory_budget, memory_pieces, parse_size, results_bytes, state_bytes
from patchscopes.testing import byte_tokenizer

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WIDTH = 1024  # wide states (4 KB each) and a small model: the states are what a bound must hold back
PROMPTS = [f"{k}: the quick brown fox jumps over the lazy dog. " * 6 for k in range(4)]


@pytest.fixture(scope="module")
def wide() -> LanguageModel:
    """A 2-layer Llama of width 1024 with the byte tokenizer."""
    import transformers as tf

    tokenizer = byte_tokenizer()
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return LanguageModel(tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32), tokenizer, name="wide")


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1.5GiB", 3 * 2**29),
                                            ("512M", 2**29), ("2 gb", 2 * 10**9), ("1048576", 2**20)])
def test_sizes_are_read_with_their_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2XB", "-1GB", "1 2GB", "nan", "inf", "", "GB", "٣GB", "1e9", "1,5GB", "0",
                                  "1000"])
def test_a_bad_size_is_one_clear_error(text):
    with pytest.raises(PatchscopesError) as info:
        parse_size(text)
    assert "--max-memory" in info.value.message and info.value.hint


def test_pieces_hold_at_most_the_budgets_bytes_of_states(tiny_llama):
    scopes = ps.plan_sweep(tiny_llama, PROMPTS, "token-identity", layers="all", positions="all")
    jobs = resolve_jobs(scopes, tiny_llama)
    assert state_bytes(jobs[0]) == 3 * 32 * 4  # h and its stacked copy on the source, f(h) on the target
    budget = ps.BatchBudget(bytes=20 * state_bytes(jobs[0]))
    pieces = memory_pieces(jobs, budget)
    assert len(pieces) == -(-len(jobs) // 20) and [j for p in pieces for j in p] == list(jobs)
    assert all(sum(state_bytes(j) for j in piece) <= budget.bytes for piece in pieces)
    assert memory_pieces(jobs, ps.BatchBudget()) == [jobs]  # no bytes: one piece


def peak_rss_above_start(fn) -> int:
    """Bytes of resident memory ``fn()`` took at its peak, above the process's memory when it started (Linux:
    the peak is reset through /proc/self/clear_refs)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    start = status("VmRSS")
    fn()
    return status("VmHWM") - start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_a_sweep_stays_under_its_memory_bound_and_takes_more_without_it(wide, same_readings):
    scopes = ps.plan_sweep(wide, PROMPTS, "token-identity", layers="all", positions="all")
    ps.run(scopes[:20], wide)  # warm-up: lazily built kernels and caches are not the sweep's
    bound = parse_size("16MiB")
    results = {}
    bounded = peak_rss_above_start(lambda: results.update(bounded=ps.run(scopes, wide, budget=memory_budget(bound))))
    unbounded = peak_rss_above_start(lambda: results.update(free=ps.run(scopes, wide)))
    states = len(scopes) * state_bytes(resolve_jobs(scopes[:1], wide)[0])
    print(f"{len(scopes)} patches: peak +{bounded / 2**20:.1f} MiB under --max-memory 16MiB, "
          f"+{unbounded / 2**20:.1f} MiB without (states {states / 2**20:.1f} MiB)")
    assert bounded <= bound
    assert unbounded > bounded + 10 * 2**20  # the bound is what held the memory back
    same_readings(results["bounded"], results["free"])


@pytest.fixture(scope="module")
def wide_dir(wide, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("wide")
    wide.hf.save_pretrained(folder)
    wide.tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_cli_bound_runs_the_sweep_in_pieces_with_the_same_output(wide_dir, tmp_path, monkeypatch):
    calls = []
    real = executors.run_batched

    def counting(jobs, budget, progress=None):
        calls.append((len(jobs), budget.bytes))
        return real(jobs, budget, progress=progress)

    monkeypatch.setattr(executors, "run_batched", counting)
    args = ["inspect", PROMPTS[0], "--model", wide_dir, "--positions", "0:200"]
    free = runner.invoke(app, [*args, "--json", str(tmp_path / "free.json")], env=ENV)
    assert free.exit_code == 0, free.output
    assert len(calls) == 1
    calls.clear()
    bounded = runner.invoke(app, [*args, "--max-memory", "8MiB", "--json", str(tmp_path / "bounded.json")], env=ENV)
    assert bounded.exit_code == 0, bounded.output
    assert len(calls) > 1 and all(bytes_ == 2 * 2**20 for _, bytes_ in calls)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("free", "bounded"))
    assert [r["top_token_ids"] for r in a] == [r["top_token_ids"] for r in b]


def test_a_bound_the_results_alone_exceed_is_refused_before_running(tiny_dir, monkeypatch):
    monkeypatch.setattr(executors, "run_batched", lambda *a, **k: pytest.fail("ran"))
    long_prompt = "the quick brown fox jumps over the lazy dog " * 10
    result = runner.invoke(app, ["inspect", long_prompt, "--model", tiny_dir, "--max-memory", "1MiB"], env=ENV)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "results of these 1,323 patches need about" in result.output and "hint:" in result.output
    assert results_bytes([ps.NextToken()] * 1323) > 2**19


def test_a_bad_max_memory_is_refused_before_the_model_loads():
    result = runner.invoke(app, ["inspect", "Hi", "--model", "/nonexistent", "--max-memory", "2XB"], env=ENV)
    assert result.exit_code == 2 and "--max-memory '2XB' is not a size" in result.output


def test_the_jobs_of_one_prompt_share_its_token_ids(tiny_llama):
    scopes = ps.plan_sweep(tiny_llama, PROMPTS[:1], "token-identity", layers="all", positions="all")
    jobs = resolve_jobs(scopes, tiny_llama)
    assert all(j.source.tokens is jobs[0].source.tokens and j.tokens is jobs[0].tokens for j in jobs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_json_results_are_streamed_to_their_file(tmp_path):
    import pandas as pd

    rows = 15000
    prompt = "the quick brown fox jumps over the lazy dog " * 70  # 3 KB in every record
    frame = pd.DataFrame({"source_prompt": [prompt] * rows, "source_layer": [k % 30 for k in range(rows)],
                          "top_tokens": [list("abcdefghij")] * rows, "top_probs": [[0.1] * 10] * rows})
    peak = peak_rss_above_start(lambda: ps.save_results(frame, tmp_path / "out.json"))
    size = (tmp_path / "out.json").stat().st_size
    assert size > 45 * 2**20
    assert peak < 1.5 * size  # json.dumps(indent=1) held every piece of the text: 177 MiB here for 49 MiB
    assert json.loads((tmp_path / "out.json").read_text())[0]["source_prompt"] == prompt
