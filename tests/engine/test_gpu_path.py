"""The GPU path checked on a CPU: budgets from device memory, answers unchanged, and bench_gpu.py's small shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import patchscopes as ps
from patchscopes.engine import BatchBudget, budget_for_memory, device_budget
from patchscopes.engine.budget import GPU_ROWS, GPU_TOKENS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def test_budgets_follow_the_device_memory(tiny_llama):
    assert budget_for_memory(None) == BatchBudget()
    gpu = budget_for_memory(80 * 2**30)
    assert (gpu.rows, gpu.tokens, gpu.bytes) == (GPU_ROWS, GPU_TOKENS, 40 * 2**30)
    assert budget_for_memory(2**30, fraction=0.25).bytes == 2**28
    assert device_budget([tiny_llama]) == BatchBudget()  # a model on the CPU keeps the CPU default


def test_a_gpu_sized_budget_changes_no_answer(tiny_llama, assert_same):
    scopes = ps.plan_sweep(tiny_llama, ["The cat sat on the mat", "Paris is in France"], "token-identity")
    scopes += ps.plan_sweep(tiny_llama, "Paris is in France", "description", layers="0,2", positions="-1",
                            max_new_tokens=5)
    big = ps.run(scopes, tiny_llama, budget=budget_for_memory(80 * 2**30))
    assert_same(big, ps.run(scopes, tiny_llama))
    assert_same(big, ps.run(scopes, tiny_llama, engine="reference"))


def test_token_strings_are_remembered_without_changing_them(smollm2):
    ids = [0, 1, 2, 504, 29733, 504, 49151]
    assert smollm2.token_strings(ids) == [smollm2.tokenizer.decode([i]) for i in ids]
    assert smollm2.token_strings(ids) == smollm2.token_strings(ids)


def test_bench_gpu_runs_its_small_shape_on_a_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--shape", "small", "--device", "cpu", "--dtype", "float32", "--tokenizer", "byte",
                         "--sentences", "1", "--naive-fraction", "0.1", "--repeats", "1", "--matmul-size", "256",
                         "--forward-rows", "4", "--forward-tokens", "16", "--budgets", "64x4096",
                         "--json", str(tmp_path / "gpu.json")])
    assert (tmp_path / "gpu.json").is_file()
    assert report["patches"] == report["source_tokens"] * 4
    assert [r["budget"] for r in report["engine"]] == ["device", "64x4096"]
    assert all(r["seconds"] > 0 and r["over_floor"] > 0 for r in report["engine"])
    assert report["floor_s"] > 0 and report["forward_tokens_per_s"] > 0
    naive = report["naive"]
    assert naive["compared"] >= 1 and naive["agree"] == naive["compared"]


def test_rows_are_decoded_only_when_a_stop_string_may_end(smollm2):
    from patchscopes.engine.decode import stop_filter

    comma, word = smollm2.encode(",")[-1], smollm2.encode(" Paris")[-1]
    may_stop = stop_filter(smollm2, (",", "\n"))
    assert may_stop(comma) and not may_stop(word)
    assert stop_filter(smollm2, ("is ",))(word)  # a stop string ending in a space: every token is checked
    assert not stop_filter(smollm2, ())(comma)
