"""Shared-prefix attention: attention over one batch-1 prefix and each row's own keys, merged by log-sum-exp, equals
plain attention over the concatenation, on random tensors and inside every tiny family (eager and SDPA, prefixes
shorter and longer than the sliding window), without a copy of the prefix per row."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import patchscopes as ps
from patchscopes import NextToken, Patchscope, Source, Target
from patchscopes.engine.interventions import site_module
from patchscopes.engine.prefix import prefix_cache
from patchscopes.models.shared_attention import prefix_attention, shared_prefix_attention, shared_view
from patchscopes.testing import TINY_FAMILIES, tiny_model

ATOL = 1e-5


def plain_attention(query, key, value, mask, scaling, softcap):
    """Softmax attention over the keys as given (GQA by repetition), the reference."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "window", "per-head"])
def test_equals_plain_attention_on_random_tensors(groups, softcap, mask_kind):
    torch.manual_seed(0)
    rows, kv_heads, q, own, length, d = 5, 2, 3, 4, 11, 8
    heads = kv_heads * groups
    query = torch.randn(rows, heads, q, d) * 2
    key, value = torch.randn(rows, kv_heads, own, d) * 2, torch.randn(rows, kv_heads, own, d)
    prefix_keys, prefix_values = torch.randn(1, kv_heads, length, d) * 2, torch.randn(1, kv_heads, length, d)
    positions = torch.arange(length + own)
    query_positions = positions[-q:]
    visible = positions[None] <= query_positions[:, None]  # (q, P + n) causal
    mask = None
    if mask_kind == "bool":
        mask = visible[None, None].expand(rows, 1, -1, -1).clone()
        mask[1, 0, 2, 3] = False  # a cut edge in one row, as a knockout makes
    elif mask_kind == "float":
        mask = torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]
    elif mask_kind == "window":
        mask = (visible & (query_positions[:, None] - positions[None] < 6))[None, None]
    elif mask_kind == "per-head":
        mask = visible[None, None].expand(1, heads, -1, -1).clone()
        mask[0, heads - 1, :, :4] = False
    want = plain_attention(query, torch.cat([prefix_keys.expand(rows, -1, -1, -1), key], 2),
                           torch.cat([prefix_values.expand(rows, -1, -1, -1), value], 2),
                           visible if mask is None else mask, 0.3, softcap)
    got = prefix_attention(query, key, value, prefix_keys, prefix_values, mask, scaling=0.3, softcap=softcap)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def _attention_outputs(model, ids: torch.Tensor, cut: int, rows: int, *, shared: bool) -> list[torch.Tensor]:
    """Every layer's attention output over the suffix rows, attending to the prefix through a shared view."""
    cache = prefix_cache(model, ids[:cut].tolist())
    outputs: list[torch.Tensor] = []
    handles = [site_module(model, layer, "attn").register_forward_hook(
        lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach().clone()))
        for layer in range(model.num_layers)]
    n = len(ids)
    try:
        with torch.no_grad(), (shared_prefix_attention(model) if shared else torch.no_grad()):
            model.forward(ids[cut:][None].expand(rows, -1), attention_mask=torch.ones(rows, n, dtype=torch.long),
                          position_ids=torch.arange(cut, n)[None].expand(rows, -1), cache=shared_view(cache),
                          use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("cut", [10, 30], ids=["prefix-in-window", "prefix-past-window"])
def test_equals_the_models_own_attention_in_every_family(family, implementation, cut):
    model = tiny_model(family)
    try:
        model.hf.set_attn_implementation(implementation)
    except (ValueError, ImportError) as err:  # Gemma 2 has no SDPA path
        pytest.skip(str(err))
    torch.manual_seed(1)
    ids = torch.randint(3, 250, (40,))  # the tiny models' sliding windows are 16 tokens
    plain = _attention_outputs(model, ids, cut, 3, shared=False)
    shared = _attention_outputs(model, ids, cut, 3, shared=True)
    assert len(plain) == len(shared) == model.num_layers
    for layer, (a, b) in enumerate(zip(shared, plain)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m, layer=layer: f"layer {layer}: {m}")


def test_the_prefix_is_not_copied_per_row(tiny_llama):
    ids = tiny_llama.encode("A preamble that runs long before the end")
    cache = prefix_cache(tiny_llama, ids[:20])
    view = shared_view(cache)
    new = torch.randn(4, cache.layers[0].keys.shape[1], 2, cache.layers[0].keys.shape[-1])
    with shared_prefix_attention(tiny_llama):
        keys, values = view.update(new, new + 1, 0)
    assert keys is new and values.shape[-2] == 2  # the rows' own keys only: the prefix goes to the attention
    keys, _ = view.update(new, new + 1, 0)  # outside, the prefix is concatenated as before
    assert keys.shape[-2] == 22
    before = tiny_llama.hf.config._attn_implementation
    with shared_prefix_attention(tiny_llama):
        assert tiny_llama.hf.config._attn_implementation.startswith("patchscopes_shared_prefix")
    assert tiny_llama.hf.config._attn_implementation == before


def test_the_proof_says_why_a_model_keeps_the_copies(monkeypatch):
    monkeypatch.setattr("patchscopes.models.proof.SUPPORTED", ("flash_attention_2",))
    model = tiny_model("llama")
    assert model.fast_path.batched and not model.fast_path.shared_attention
    assert "reproduces flash_attention_2 attention, not 'sdpa'" in model.fast_path.attention_reason


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_sweeps_agree_with_and_without_shared_attention(family, assert_same):
    model = tiny_model(family)
    assert model.fast_path.shared_attention
    target = "A preamble that runs well past the sliding window: x, and the rest"
    scopes = [Patchscope(Source("The Eiffel Tower is in Paris", layer, -1), Target(target, t_layer, "x"),
                         NextToken(top_k=3))
              for layer in range(model.num_layers) for t_layer in range(model.num_layers)]
    shared = ps.run(scopes, model)
    model.fast_path = dataclasses.replace(model.fast_path, shared_attention=False)
    assert_same(shared, ps.run(scopes, model))
    assert_same(shared, ps.run(scopes, model, engine="reference"))
