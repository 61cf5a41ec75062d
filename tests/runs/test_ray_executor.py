"""The Ray executor on a local cluster (``ray.init(num_cpus=2)``): the results of one process, a dead worker survived.

One cluster and one pool of workers serve the whole module: Ray's start-up takes many seconds on a busy machine.
"""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes.runs import RunOptions

ray = pytest.importorskip("ray")

from patchscopes.runs import RayExecutor  # noqa: E402
from patchscopes.runs.shards import plan_shards  # noqa: E402

PROMPTS = ["The cat sat on the mat", "Paris is in France"]


@pytest.fixture(scope="session")
def ray_cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_llama):
    """The tiny Llama saved to a folder and loaded by its path, the way workers load it."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.hf.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    return ps.load_model(str(folder))


@pytest.fixture(scope="module")
def executor(ray_cluster):
    pool = RayExecutor(workers=2, cpus_per_worker=0.5)  # room on 2 CPUs for the other tests' workers
    yield pool
    pool.shutdown()


def scopes_of(model):
    scopes = ps.plan_sweep(model, PROMPTS, "token-identity", layers="all", positions="0:6")
    sampled = ps.Generate(max_new_tokens=4, do_sample=True, temperature=1.5, seed=3)
    scopes += [ps.Patchscope(ps.Source(p, 1, -1), ps.Target("x is like", 1, "x"), sampled) for p in PROMPTS * 3]
    return scopes


def test_ray_gives_the_results_of_one_process(tmp_path, saved_tiny, executor, same_readings):
    scopes = scopes_of(saved_tiny)
    local = ps.run(scopes, saved_tiny, shard_size=5)
    on_ray = ps.run(scopes, saved_tiny, shard_size=5, executor=executor, run_dir=tmp_path / "run")
    same_readings(on_ray, local, exact=True)  # sampled generations too: each job keeps its seed
    resumed = ps.run(scopes, saved_tiny, shard_size=5, executor=executor, run_dir=tmp_path / "run")
    same_readings(resumed, local, exact=True)


@pytest.mark.slow  # one more worker starts: ~13 s
def test_a_worker_of_another_model_is_refused(ray_cluster, tiny_gpt2, saved_tiny):
    with RayExecutor(workers=1, cpus_per_worker=0.5, models={"tiny-gpt2": saved_tiny.name}) as pool, \
            pytest.raises(ps.PatchscopesError, match="other than the driver's"):
        ps.run(ps.plan_sweep(tiny_gpt2, "hi there", "token-identity", layers=0), tiny_gpt2, executor=pool)


@pytest.mark.slow  # a replacement worker loads its model: ~10 s more
def test_a_dead_workers_shard_runs_elsewhere(saved_tiny, executor, same_readings):
    scopes = scopes_of(saved_tiny)
    jobs = ps.resolve.resolve_jobs(scopes, saved_tiny)
    shards = plan_shards(jobs, 3, "batched")
    local = ps.run(scopes, saved_tiny, shard_size=3)
    got: dict[int, list] = {}
    before = executor.restarts
    for k, (shard, readings) in enumerate(executor.run_shards(scopes, jobs, shards, model=saved_tiny,
                                                              engine="batched", budget=None)):
        got[shard.index] = readings
        if k == 0:
            ray.kill(executor.actors[-1])  # a worker dies with shards queued on it
    assert executor.restarts == before + 1
    assert sorted(got) == list(range(len(shards)))
    readings = [r for index in sorted(got) for r in got[index]]
    assert [r.top_token_ids for r in readings] == [r.readings.top_token_ids for r in local]
    assert [r.generated_text for r in readings] == [r.readings.generated_text for r in local]


@pytest.mark.slow  # each worker loads SmolLM2
def test_smollm2_sweep_on_ray_equals_one_process(smollm2, executor):
    local = ps.sweep(smollm2, PROMPTS[0], "token-identity", layers="0:30:6", shard_size=8)
    on_ray = ps.sweep(smollm2, PROMPTS[0], "token-identity", layers="0:30:6", shard_size=8, executor=executor)
    assert on_ray["top_token"].tolist() == local["top_token"].tolist()
    assert on_ray["top_probs"].tolist() == local["top_probs"].tolist()


def test_an_experiment_on_ray_equals_one_process(tmp_path, saved_tiny, executor):
    from patchscopes.experiments.next_token import next_token_samples

    docs = ["The quick brown fox jumps over the lazy dog. " * 3, "A stitch in time saves nine. " * 3]
    options = dict(samples=6, methods=["logit-lens", "token-identity"], max_tokens=24, batch_samples=3)
    # the same shards as on Ray
    here = next_token_samples(saved_tiny, docs, options=RunOptions(run_dir=tmp_path / "here"), **options)
    there = next_token_samples(saved_tiny, docs, options=RunOptions(executor=executor, run_dir=tmp_path / "there"),
                               **options)
    assert there.equals(here)
