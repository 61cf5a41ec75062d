"""Causal tracing as patchscopes equals ROME's procedure written plainly (one forward per cell)."""

from __future__ import annotations

import numpy as np
import pytest

import patchscopes as ps
from patchscopes.experiments.causal_tracing import causal_trace, noise_tensor, window_layers
from patchscopes.experiments.originals import rome_causal_trace, rome_noise
from patchscopes.runs import RunOptions
from patchscopes.scope import token_span

TINY_PROMPT, TINY_SUBJECT = "Ann is in Rome", "Ann"
ENGINES = ["batched", "reference"]


def _compare(model, prompt, subject, kind, samples, window=2, atol=1e-5, engine="batched", *,
             noise_kind="gaussian", replace=False, token_range=None, draw=False):
    """causal_trace against rome_causal_trace on the same noise: given to both, or (``draw``) drawn by
    causal_trace from its seed and kind and given to ROME's loop."""
    ids = model.encode(prompt)
    span = token_span(model, prompt, ids, subject, "subject")
    noise = noise_tensor(model, len(span), samples, scale=0.7, seed=1, kind=noise_kind)
    ours = causal_trace(model, prompt, subject, kind=kind, window=window, noise_samples=samples,
                        noise_scale=0.7, seed=1, noise_kind=noise_kind, replace=replace, token_range=token_range,
                        options=RunOptions(engine=engine), **({} if draw else {"noise": noise}))
    p_clean, p_corrupted, table = rome_causal_trace(
        model, ids, (span[0], span[-1] + 1), ours.answer_id, noise, None if kind == "state" else kind, window,
        replace=replace, token_range=token_range)
    assert ours.p_clean == pytest.approx(p_clean, abs=atol)
    assert ours.p_corrupted == pytest.approx(p_corrupted, abs=atol)
    np.testing.assert_allclose(ours.p_restored, table.numpy(), atol=atol)
    return ours


@pytest.mark.parametrize("kind", ["state", "mlp", "attn"])
def test_equals_rome_on_tiny_models(tiny, kind):
    _compare(tiny, TINY_PROMPT, TINY_SUBJECT, kind, samples=3)


def test_reference_engine_equals_rome(tiny_llama):
    _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, "state", samples=2, engine="reference")


def _differs(a, b, atol=1e-5):
    """The option changes the trace by far more than the tolerance (so the comparison above can fail)."""
    assert abs(a.p_corrupted - b.p_corrupted) > 100 * atol or np.abs(a.p_restored - b.p_restored).max() > 100 * atol


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["state", "mlp"])
def test_uniform_noise_equals_rome(tiny_llama, engine, kind):
    ours = _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind, samples=2, engine=engine, noise_kind="uniform",
                    draw=True)
    assert ours.noise_kind == "uniform" and ours.seed == 1 and ours.noise_scale == 0.7
    _differs(ours, causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind=kind, window=2, noise_samples=2,
                                noise_scale=0.7, seed=1, options=RunOptions(engine=engine)))


def test_uniform_noise_tensor_is_uniform(tiny_llama):
    noise = noise_tensor(tiny_llama, 3, 50, scale=0.5, seed=0, kind="uniform")
    assert noise.shape == (50, 3, tiny_llama.hidden_size)
    assert float(noise.abs().max()) <= 0.5 and float(noise.min()) < -0.45 and float(noise.max()) > 0.45
    assert float(noise.std()) == pytest.approx(0.5 / 3 ** 0.5, rel=0.05)
    assert not noise_tensor(tiny_llama, 3, 50, scale=0.5, seed=0).abs().max() <= 0.5  # Gaussian: unbounded
    with pytest.raises(ps.PatchscopesError, match="noise kind"):
        noise_tensor(tiny_llama, 3, 2, scale=0.5, seed=0, kind="laplace")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["state", "attn"])
def test_replace_equals_rome(tiny_llama, engine, kind):
    ours = _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind, samples=2, engine=engine, replace=True)
    assert ours.replace
    _differs(ours, _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind, samples=2, engine=engine))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["state", "mlp"])
def test_subject_last_equals_rome(tiny_llama, engine, kind):
    ours = _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind, samples=2, engine=engine,
                    token_range="subject_last")
    assert ours.positions == (ours.subject[-1],) and ours.p_restored.shape == (1, tiny_llama.num_layers)
    full = _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind, samples=2, engine=engine)
    np.testing.assert_allclose(ours.p_restored[0], full.p_restored[ours.subject[-1]], atol=1e-6)
    assert {r["position"] for r in ours.records()} == {ours.subject[-1]}
    assert ours.figure().data[0].z.shape == (1, tiny_llama.num_layers)


def test_every_option_together_on_tiny_models(tiny):
    _compare(tiny, TINY_PROMPT, TINY_SUBJECT, "attn", samples=2, noise_kind="uniform", replace=True,
             token_range=[-1, 0, 2], draw=True)


def test_given_rome_draw_reproduces_rome(tiny_llama):
    """ROME's own noise (numpy RandomState(1)), passed as ``noise=``, gives ROME's numbers."""
    ids = tiny_llama.encode(TINY_PROMPT)
    span = token_span(tiny_llama, TINY_PROMPT, ids, TINY_SUBJECT, "subject")
    for uniform in (False, True):
        noise = rome_noise(3, len(span), tiny_llama.hidden_size, 0.7, uniform_noise=uniform)
        ours = causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, noise_samples=3, noise=noise,
                            token_range="subject_last")
        p_clean, p_corrupted, table = rome_causal_trace(tiny_llama, ids, (span[0], span[-1] + 1), ours.answer_id,
                                                        0.7, samples=3, uniform_noise=uniform,
                                                        token_range="subject_last")
        assert ours.p_clean == pytest.approx(p_clean, abs=1e-5) and ours.seed is None
        assert ours.p_corrupted == pytest.approx(p_corrupted, abs=1e-5)
        np.testing.assert_allclose(ours.p_restored, table.numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["state", "mlp"])
def test_equals_rome_on_smollm2(smollm2, kind):
    trace = _compare(smollm2, "The Eiffel Tower is located in the city of", "The Eiffel Tower", kind,
                     samples=3, window=10, atol=1e-4)
    assert trace.answer.strip() == "Paris"


def test_records_and_effects(tiny_llama):
    trace = causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, noise_samples=2)
    records = trace.records()
    n = len(tiny_llama.encode(TINY_PROMPT))
    assert len(records) == n * tiny_llama.num_layers
    first = records[0]
    for key in ("layer", "position", "token", "is_subject", "kind", "p_clean", "p_corrupted", "p_restored",
                "indirect_effect"):
        assert key in first
    assert {k: first[k] for k in ("answer_id", "noise_kind", "noise_samples", "seed", "replace", "token_range")} == {
        "answer_id": trace.answer_id, "noise_kind": "gaussian", "noise_samples": 2, "seed": 0, "replace": False,
        "token_range": None}
    assert first["noise_scale"] == pytest.approx(trace.noise_scale) and trace.noise_scale > 0
    assert next(r["position"] for r in records if r["is_subject"]) == trace.subject[0]
    # restoring the whole last layer at the last token gives back the clean run
    last = next(r for r in records if r["position"] == n - 1 and r["layer"] == tiny_llama.num_layers - 1)
    assert last["p_restored"] == pytest.approx(trace.p_clean, abs=1e-5)
    assert trace.figure().data[0].z.shape == (n, tiny_llama.num_layers)


def test_window_layers_follow_rome():
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(15, 10, 30)) == list(range(10, 20))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    assert list(window_layers(5, 3, 30)) == [4, 5, 6]


def test_bad_input_is_refused(tiny_llama):
    with pytest.raises(ps.PatchscopesError, match="does not occur"):
        causal_trace(tiny_llama, TINY_PROMPT, "Bob")
    with pytest.raises(ps.PatchscopesError, match="empty"):
        causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, answer=" ")
    with pytest.raises(ps.PatchscopesError, match="window"):
        causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, kind="mlp", window=4)
    with pytest.raises(ps.PatchscopesError, match="noise kind"):
        causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, noise_kind="laplace")
    with pytest.raises(ps.PatchscopesError, match="unknown token range"):
        causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, token_range="subject_first")
    for bad in ([], [99], [1, 1], [True]):
        with pytest.raises(ps.PatchscopesError, match="token range"):
            causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, token_range=bad)


def test_settings_of_given_noise(tiny_llama):
    ids = tiny_llama.encode(TINY_PROMPT)
    span = token_span(tiny_llama, TINY_PROMPT, ids, TINY_SUBJECT, "subject")
    noise = noise_tensor(tiny_llama, len(span), 1, scale=0.3, seed=5)
    trace = causal_trace(tiny_llama, TINY_PROMPT, TINY_SUBJECT, noise_samples=1, noise=noise, token_range=(-1, 0))
    assert trace.positions == (len(ids) - 1, 0) and trace.p_restored.shape == (2, tiny_llama.num_layers)
    settings = trace.settings()
    assert settings["seed"] is None and settings["noise_scale"] is None and settings["token_range"] == [len(ids) - 1, 0]
    assert [r["position"] for r in trace.records()][:: tiny_llama.num_layers] == [len(ids) - 1, 0]
