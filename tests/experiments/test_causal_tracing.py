"""Causal tracing as patchscopes equals ROME's procedure written plainly (one forward per cell)."""

from __future__ import annotations

import numpy as np
import pytest

import patchscopes as ps
from patchscopes.experiments.causal_tracing import causal_trace, noise_tensor, window_layers
from patchscopes.experiments.originals import rome_causal_trace
from patchscopes.scope import token_span

TINY_PROMPT, TINY_SUBJECT = "Ann is in Rome", "Ann"


def _compare(model, prompt, subject, kind, samples, window=2, atol=1e-5, engine="batched"):
    ids = model.encode(prompt)
    span = token_span(model, prompt, ids, subject, "subject")
    noise = noise_tensor(model, len(span), samples, scale=0.7, seed=1)
    ours = causal_trace(model, prompt, subject, kind=kind, window=window, noise_samples=samples, noise=noise,
                        engine=engine)
    p_clean, p_corrupted, table = rome_causal_trace(
        model, ids, (span[0], span[-1] + 1), ours.answer_id, noise, None if kind == "state" else kind, window)
    assert ours.p_clean == pytest.approx(p_clean, abs=atol)
    assert ours.p_corrupted == pytest.approx(p_corrupted, abs=atol)
    np.testing.assert_allclose(ours.p_restored, table.numpy(), atol=atol)
    return ours


@pytest.mark.parametrize("kind", ["state", "mlp", "attn"])
def test_equals_rome_on_tiny_models(tiny, kind):
    _compare(tiny, TINY_PROMPT, TINY_SUBJECT, kind, samples=3)


def test_reference_engine_equals_rome(tiny_llama):
    _compare(tiny_llama, TINY_PROMPT, TINY_SUBJECT, "state", samples=2, engine="reference")


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
