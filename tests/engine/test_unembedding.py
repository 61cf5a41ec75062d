"""Top-k readings one vocabulary slice at a time equal a softmax over the full logits."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from torch import nn

import patchscopes as ps
from patchscopes.engine.hooks import StopForward
from patchscopes.engine.unembedding import logits_of, top_k_logprobs, unembedding_input
from patchscopes.testing import tiny_model


def full_top_k(model, hidden, k):
    logprobs = torch.log_softmax(model.head(hidden).float(), dim=-1)
    return logprobs.topk(k, dim=-1)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("chunk", [7, 64, 100_000])
def test_chunked_top_k_equals_full_softmax(tiny, k, chunk):
    torch.manual_seed(0)
    residual = torch.randn(6, tiny.hidden_size) * 3
    want_values, want_ids = full_top_k(tiny, residual, k)
    values, ids = top_k_logprobs(tiny, tiny.final_normed(residual), k, chunk=chunk)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(values, want_values, atol=1e-5, rtol=0)


def test_chunked_top_k_on_smollm2(smollm2):
    torch.manual_seed(0)
    residual = torch.randn(4, smollm2.hidden_size) * 5
    want_values, want_ids = full_top_k(smollm2, residual, 10)
    values, ids = top_k_logprobs(smollm2, smollm2.final_normed(residual), 10)
    assert torch.equal(ids, want_ids)
    # a running log-sum-exp over 24 slices of a 49k vocabulary, in float32: 1.4e-5 seen with this BLAS
    torch.testing.assert_close(values, want_values, atol=5e-5, rtol=0)


def test_k_larger_than_a_chunk_or_the_vocabulary(tiny_llama):
    residual = torch.randn(3, tiny_llama.hidden_size)
    hidden = tiny_llama.final_normed(residual)
    vocab = tiny_llama.vocab_size
    values, ids = top_k_logprobs(tiny_llama, hidden, vocab + 10, chunk=5)
    assert ids.shape == (3, vocab)
    assert sorted(ids[0].tolist()) == list(range(vocab))
    torch.testing.assert_close(values.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)


def test_another_kind_of_unembedding_is_applied_whole(tiny_llama, monkeypatch):
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    residual = torch.randn(3, tiny_llama.hidden_size)
    want_values, want_ids = full_top_k(tiny_llama, residual, 4)
    wrapped = dataclasses.replace(tiny_llama.arch, unembed=Wrapped(tiny_llama.arch.unembed))
    monkeypatch.setattr(tiny_llama, "arch", wrapped)
    values, ids = top_k_logprobs(tiny_llama, tiny_llama.final_normed(residual), 4, chunk=5)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(values, want_values, atol=1e-6, rtol=0)


def test_offloaded_unembedding_is_applied_whole(tiny_llama, monkeypatch):
    """Weights left on the meta device (an accelerate offload) are not sliced; the module is called whole."""
    residual = torch.randn(2, tiny_llama.hidden_size)
    want_values, want_ids = full_top_k(tiny_llama, residual, 3)
    hidden = tiny_llama.final_normed(residual)
    calls = []
    handle = tiny_llama.arch.unembed.register_forward_hook(lambda *args: calls.append(1))
    real = tiny_llama.arch.unembed.weight
    try:
        monkeypatch.setattr(type(real), "device", property(lambda self: torch.device("meta")), raising=False)
        values, ids = top_k_logprobs(tiny_llama, hidden, 3, chunk=5)
    finally:
        monkeypatch.undo()
        handle.remove()
    assert calls == [1]
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(values, want_values, atol=1e-6, rtol=0)


def test_forward_stops_at_the_unembedding_with_its_input(tiny):
    ids = torch.tensor([tiny.encode("Hello there")])
    logits, _ = tiny.forward(ids, attention_mask=torch.ones_like(ids))
    store: dict = {}
    with torch.no_grad(), unembedding_input(tiny, store), contextlib.suppress(StopForward):
        tiny.forward(ids, attention_mask=torch.ones_like(ids), logits_to_keep=2)
        pytest.fail("the forward went past the unembedding")
    assert store["hidden"].shape == (1, 2, tiny.hidden_size)
    torch.testing.assert_close(logits_of(tiny, store["hidden"]), logits[:, -2:], atol=1e-5, rtol=0)
    assert not tiny.arch.unembed._forward_pre_hooks  # the hook is gone


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bfloat16_engines_agree_where_the_answer_is_clear(family):
    """In bfloat16 the engines' matrix products differ in shape, so only clear answers must agree."""
    model = tiny_model(family)
    model.hf.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    scopes = ps.plan_sweep(model, ["The Eiffel Tower is in Paris", "Hi there"], "token-identity",
                           layers="all", positions="all", top_k=2)
    fast, plain = ps.run(scopes, model), ps.run(scopes, model, engine="reference")
    clear = 0
    for a, b in zip(fast, plain):
        assert abs(math.log(a.top_probs[0] / b.top_probs[0])) < 0.1
        if math.log(b.top_probs[0] / b.top_probs[1]) > 0.1:  # the runner-up is 10% less likely
            clear += 1
            assert a.readings.top_token_ids[0] == b.readings.top_token_ids[0]
    assert clear >= len(plain) // 4
