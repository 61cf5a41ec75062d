"""Run directories: the same results as a run without one, finished shards skipped, refusals, atomic shards."""

from __future__ import annotations

import json

import pytest

import patchscopes as ps
from patchscopes.runs import RunDir, RunOptions
from patchscopes.storage import atomic_write

PROMPTS = ["The cat sat on the mat", "Paris is in France"]


def scopes_of(model):
    return ps.plan_sweep(model, PROMPTS, "token-identity", layers="all", positions="all")


def test_a_run_dir_changes_nothing_and_a_second_run_reads_every_shard(tmp_path, tiny_llama, same_readings,
                                                                      counting_executor):
    scopes = scopes_of(tiny_llama)
    plain = ps.run(scopes, tiny_llama, shard_size=9)
    first = counting_executor()
    kept = ps.run(scopes, tiny_llama, shard_size=9, run_dir=tmp_path / "run", executor=first)
    shards = -(-len(scopes) // 9)
    assert first.shards == shards
    assert len(list((tmp_path / "run" / "shards").glob("*.jsonl"))) == shards
    again = counting_executor()
    resumed = ps.run(scopes, tiny_llama, shard_size=9, run_dir=tmp_path / "run", executor=again)
    assert again.shards == 0
    same_readings(plain, kept, exact=True)
    same_readings(kept, resumed, exact=True)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["command"] == "run" and manifest["models"][0]["name"] == "tiny-llama"


def test_a_lost_shard_is_redone_and_a_leftover_temporary_file_is_ignored(tmp_path, tiny_llama, same_readings,
                                                                          counting_executor):
    scopes = scopes_of(tiny_llama)
    done = ps.run(scopes, tiny_llama, shard_size=16, run_dir=tmp_path / "run")
    files = sorted((tmp_path / "run" / "shards").glob("*.jsonl"))
    files[1].unlink()  # a shard the kill cut off: only its temporary file is there, half written
    (files[1].parent / f".{files[1].name}.abc.tmp").write_text('{"top_tokens": ["a"')
    counter = counting_executor()
    resumed = ps.run(scopes, tiny_llama, shard_size=16, run_dir=tmp_path / "run", executor=counter)
    assert counter.shards == 1
    same_readings(done, resumed, exact=True)


def test_full_logits_survive_the_round_trip(tmp_path, tiny_llama):
    scope = ps.Patchscope(ps.Source("hello world", 1, -1), ps.Target("cat -> cat; x", 1, -1),
                          ps.NextToken(top_k=3, full_logits=True))
    first = ps.run([scope, scope], tiny_llama, run_dir=tmp_path / "run")
    again = ps.run([scope, scope], tiny_llama, run_dir=tmp_path / "run")
    assert again[0].logits is not None and again[0].logits.equal(first[0].logits)


def test_another_run_is_refused(tmp_path, tiny_llama, tiny_gpt2):
    scopes = scopes_of(tiny_llama)
    ps.run(scopes, tiny_llama, run_dir=tmp_path / "run")
    with pytest.raises(ps.PatchscopesError, match="other settings") as info:
        ps.run(scopes, tiny_llama, run_dir=tmp_path / "run", engine="reference")
    assert "--run-dir" in info.value.hint
    with pytest.raises(ps.PatchscopesError, match="other data"):
        ps.run(scopes[:5], tiny_llama, run_dir=tmp_path / "run")
    with pytest.raises(ps.PatchscopesError, match="another model"):
        ps.run(scopes_of(tiny_gpt2), tiny_gpt2, run_dir=tmp_path / "run")
    with pytest.raises(ps.PatchscopesError, match="another command"):
        RunDir.open(tmp_path / "run", command="eval attributes", settings={}, models=[tiny_llama])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ps.PatchscopesError, match="not a run directory"):
        ps.run(scopes, tiny_llama, run_dir=tmp_path / "other")


def test_cached_steps_and_atomic_writes(tmp_path):
    run = RunDir.open(tmp_path / "run", command="test", settings={"a": 1})
    calls = []
    assert run.cached("step", [1, 2], lambda: calls.append(1) or {"x": [1.5, "y"]}) == {"x": [1.5, "y"]}
    assert run.cached("step", [1, 2], lambda: calls.append(1) or {}) == {"x": [1.5, "y"]}
    assert len(calls) == 1

    def fails(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.json", fails)
    assert list(tmp_path.glob("*out.json*")) == []  # neither the file nor its temporary copy


def test_an_experiment_resumes_from_its_run_dir(tmp_path, tiny_llama, counting_executor):
    from patchscopes.experiments.next_token import next_token_samples

    docs = ["The quick brown fox jumps over the lazy dog. " * 3, "A stitch in time saves nine. " * 3]
    options = dict(samples=4, methods=["logit-lens", "token-identity"], max_tokens=24, batch_samples=2)
    plain = next_token_samples(tiny_llama, docs, **options)
    kept = next_token_samples(tiny_llama, docs, options=RunOptions(run_dir=tmp_path / "run"), **options)
    counter = counting_executor()
    resumed = next_token_samples(tiny_llama, docs, options=RunOptions(run_dir=tmp_path / "run", executor=counter),
                                 **options)
    assert counter.shards == 0
    for frame in (kept, resumed):
        assert frame.equals(plain)
    with pytest.raises(ps.PatchscopesError, match="other settings"):
        next_token_samples(tiny_llama, docs, options=RunOptions(run_dir=tmp_path / "run"), **{**options, "samples": 3})


def test_an_affine_fit_resumes_from_its_saved_sums(tmp_path, tiny_llama, monkeypatch):
    from patchscopes.lenses import affine
    from patchscopes.lenses.fit_data import iter_hidden

    docs = [f"Document {k}: the quick brown fox jumps over the lazy dog number {k}." for k in range(12)]
    options = dict(samples=300, max_tokens=16, batch_size=2)
    whole = affine.fit_affine_lens(tiny_llama, docs, **options)

    def killed_after(batches: int):
        def reading(*args, skip=0, **kwargs):
            skipped.append(skip)
            for k, hidden in enumerate(iter_hidden(*args, skip=skip, **kwargs)):
                if k == batches:
                    raise KeyboardInterrupt  # the kill: nothing after this batch is saved
                yield hidden
        return reading

    skipped: list[int] = []
    monkeypatch.setattr(affine, "CHECKPOINT_SECONDS", 0.0)  # save after every batch
    monkeypatch.setattr(affine, "iter_hidden", killed_after(3))
    with pytest.raises(KeyboardInterrupt):
        affine.fit_affine_lens(tiny_llama, docs, options=RunOptions(run_dir=tmp_path / "run"), **options)
    monkeypatch.setattr(affine, "iter_hidden", killed_after(10**6))
    resumed = affine.fit_affine_lens(tiny_llama, docs, options=RunOptions(run_dir=tmp_path / "run"), **options)
    assert skipped == [0, 3]
    for layer in range(tiny_llama.num_layers):
        assert resumed.maps[layer].weight.equal(whole.maps[layer].weight)
        assert resumed.maps[layer].bias.equal(whole.maps[layer].bias)


def test_a_model_loaded_with_device_auto_works_with_run_dirs(tmp_path, tiny_llama, same_readings):
    tiny_llama.hf.save_pretrained(tmp_path / "model")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "model")
    spread = ps.load_model(str(tmp_path / "model"), device="auto")  # accelerate's device map (all CPU here)
    scopes = ps.plan_sweep(spread, PROMPTS, "token-identity", layers="0,2", positions="-3:")
    kept = ps.run(scopes, spread, run_dir=tmp_path / "run", shard_size=4)
    same_readings(kept, ps.run(scopes, tiny_llama), atol=1e-5)
    same_readings(ps.run(scopes, spread, run_dir=tmp_path / "run", shard_size=4), kept, exact=True)


def test_soft_prompt_vectors_are_part_of_a_shards_key(tmp_path, tiny_llama):
    import torch

    def scope(seed):
        vectors = torch.randn(3, tiny_llama.hidden_size, generator=torch.Generator().manual_seed(seed))
        return ps.Patchscope(ps.Source("The cat sat", 1, -1), ps.Target(ps.SoftPrompt(vectors, after=" is"), 1, 2),
                             ps.NextToken(top_k=3))

    store = RunDir.open(tmp_path / "run", command="two runs", settings={})  # as an experiment shares one
    first = ps.run([scope(0)], tiny_llama, run_dir=store)
    other = ps.run([scope(1)], tiny_llama, run_dir=store)  # same coordinates, other vectors: not read back
    assert len(list((tmp_path / "run" / "shards").glob("*.jsonl"))) == 2
    assert other[0].readings.top_probs == ps.run([scope(1)], tiny_llama)[0].readings.top_probs
    assert first[0].readings.top_probs != other[0].readings.top_probs


def test_baselines_go_through_the_executor_and_the_run_dir(tmp_path, tiny_llama, counting_executor):
    """The unpatched runs are jobs like the patches: run by the executor, kept in shards, read back on resume."""
    scopes = scopes_of(tiny_llama)
    first = counting_executor()
    kept = ps.run(scopes, tiny_llama, baseline=True, shard_size=9, run_dir=tmp_path / "run", executor=first)
    shards = -(-(len(scopes) + 1) // 9)  # one baseline: every scope shares the identity prompt and readout
    assert first.shards == shards
    again = counting_executor()
    resumed = ps.run(scopes, tiny_llama, baseline=True, shard_size=9, run_dir=tmp_path / "run", executor=again)
    assert again.shards == 0
    plain = ps.run(ps.Patchscope(None, ps.Target(scopes[0].target.prompt, 0), scopes[0].readout), tiny_llama)[0]
    for result in kept + resumed:
        assert result.baseline.top_token_ids == plain.readings.top_token_ids
        assert result.baseline.top_probs == pytest.approx(plain.readings.top_probs, abs=1e-6)
