"""The target prefix's key/value cache, computed once and shared by every row instead of copied."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

import patchscopes as ps
from patchscopes import Generate, Patchscope, Source, Target
from patchscopes.engine.prefix import prefix_cache
from patchscopes.models.shared_attention import PrefixedLayer, prefixed_cache, shared_view
from patchscopes.testing import tiny_model

# The tiny models' sliding windows are 16 tokens; the byte tokenizer gives one token per character.
LONG_TARGET = "A preamble that runs well past the sliding window: x, and the rest"
SHORT_TARGET = "Say x:"
PROMPTS = ["The Eiffel Tower is in Paris", "Hi"]


def generation_scopes(model: ps.LanguageModel, target: str, readout: Generate) -> list[Patchscope]:
    return [Patchscope(Source(prompt, layer, -1), Target(target, t_layer, "x"), readout)
            for prompt in PROMPTS for layer in (0, model.num_layers - 1) for t_layer in (0, model.num_layers - 1)]


@pytest.mark.parametrize("target", [LONG_TARGET, SHORT_TARGET], ids=["prefix-past-window", "short-prefix"])
def test_generation_with_a_shared_prefix_matches_reference(tiny, target, assert_same):
    # 24 new tokens after a short prefix run past the sliding window during decoding.
    scopes = generation_scopes(tiny, target, Generate(max_new_tokens=24))
    assert_same(ps.run(scopes, tiny, budget=ps.BatchBudget(rows=3)), ps.run(scopes, tiny, engine="reference"))


def test_sampling_with_a_shared_prefix_equals_sampling_with_copies(tiny, monkeypatch, assert_same):
    scopes = generation_scopes(tiny, SHORT_TARGET, Generate(max_new_tokens=24, do_sample=True, sample_top_k=50, seed=3))
    shared = ps.run(scopes, tiny, budget=ps.BatchBudget(rows=3))
    monkeypatch.setattr("patchscopes.engine.batched.prefixed_cache", lambda cache: None)
    assert_same(shared, ps.run(scopes, tiny, budget=ps.BatchBudget(rows=3)))


def test_generation_rows_store_only_their_own_tokens(tiny_llama):
    ids = tiny_llama.encode(LONG_TARGET)
    cache = prefix_cache(tiny_llama, ids[:20])
    shared = prefixed_cache(cache)
    rows = torch.tensor([ids[20:23]] * 4)
    positions = torch.arange(20, 23)[None].expand(4, -1)
    with torch.no_grad():
        _, out = tiny_llama.forward(rows, attention_mask=torch.ones(4, 23, dtype=torch.long),
                                    position_ids=positions, cache=shared, use_cache=True)
    for layer, original in zip(out.layers, cache.layers):
        assert isinstance(layer, PrefixedLayer)
        assert layer.keys.shape[0] == 4 and layer.keys.shape[-2] == 3
        assert layer.prefix_keys is original.keys and original.keys.shape[0] == 1
        assert layer.get_seq_length() == 23
    out.batch_select_indices(torch.tensor([0, 2]))
    assert out.layers[0].keys.shape[0] == 2 and out.layers[0].prefix_keys.shape[0] == 1


def test_a_prefix_cut_by_a_sliding_window_is_copied_instead():
    mistral = tiny_model("mistral")
    ids = mistral.encode(LONG_TARGET)
    assert prefixed_cache(prefix_cache(mistral, ids[:10])) is not None
    assert prefixed_cache(prefix_cache(mistral, ids[:30])) is None  # the window already dropped tokens
    assert shared_view(prefix_cache(mistral, ids[:30])) is not None  # one forward sees what it keeps


def test_fallback_copies_give_the_same_generations(tiny_llama, monkeypatch, assert_same):
    scopes = generation_scopes(tiny_llama, LONG_TARGET, Generate(max_new_tokens=6))
    monkeypatch.setattr("patchscopes.engine.batched.prefixed_cache", lambda cache: None)
    assert_same(ps.run(scopes, tiny_llama), ps.run(scopes, tiny_llama, engine="reference"))


def test_shared_view_stores_nothing(tiny):
    ids = tiny.encode(LONG_TARGET)
    cache = prefix_cache(tiny, ids[:20])
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    view = shared_view(cache)
    assert view is not None
    rows = 3
    new = torch.randn(rows, *cache.layers[0].keys.shape[1:2], 2, cache.layers[0].keys.shape[-1])
    keys, values = view.update(new, new + 1, 0)
    assert keys.shape[0] == rows and keys.shape[-2] == cache.layers[0].keys.shape[-2] + 2
    torch.testing.assert_close(keys[:, :, -2:], new, rtol=0, atol=0)
    torch.testing.assert_close(keys[1, :, :-2], cache.layers[0].keys[0], rtol=0, atol=0)
    torch.testing.assert_close(values[:, :, -2:], new + 1, rtol=0, atol=0)
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_shared_view_refuses_caches_it_cannot_reproduce(tiny_llama):
    static = StaticCache(config=tiny_llama.hf.config, max_cache_len=8)
    assert shared_view(static) is None
    assert shared_view(None) is None
    ids = tiny_llama.encode(LONG_TARGET)
    cache = prefix_cache(tiny_llama, ids[:5])
    cache.batch_repeat_interleave(2)  # a cache of two rows is not a shared prefix
    assert shared_view(cache) is None


