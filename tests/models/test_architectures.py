"""Declarative architecture descriptions: every family resolves, unknown and wrong ones fail clearly."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
import patchscopes.models.architectures as architectures
from patchscopes import ArchitectureSpec, PatchscopesError, register_architecture
from patchscopes.errors import UnknownArchitectureError
from patchscopes.models import BUILTIN_ARCHITECTURES, get_module
from patchscopes.testing import tiny_model

PROMPT = "The Eiffel Tower is in Paris"


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations do not leak into other tests."""
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    return architectures._REGISTRY


def _fresh_llama(model_type: str | None = None):
    """The weights and tokenizer of the tiny Llama, on a new object that a test may change."""
    lm = tiny_model("llama")
    if model_type is not None:
        lm.hf.config.model_type = model_type
    return lm.hf, lm.tokenizer


def test_every_tiny_family_resolves(tiny):
    arch = tiny.arch
    assert tiny.num_layers == 3 and len(arch.blocks) == 3
    assert tiny.hidden_size == 32
    assert tiny.vocab_size == len(tiny.tokenizer)
    assert tiny.hf.config.model_type in ps.known_model_types()
    assert arch.embed.weight.shape == (tiny.vocab_size, 32)
    expected_cap = 30.0 if tiny.hf.config.model_type in ("gemma2", "gemma3_text") else None
    assert arch.softcap == expected_cap
    assert "layers=3, d=32" in repr(tiny)


def test_layer_convention_and_head(tiny):
    """Layer l is block l's output (HF ``hidden_states[l + 1]``); the head of the last one gives the logits."""
    ids = torch.tensor([tiny.encode(PROMPT)])
    with torch.no_grad():
        out = tiny.hf(input_ids=ids, output_hidden_states=True)
        for layer in range(tiny.num_layers - 1):
            torch.testing.assert_close(_block_output(tiny, ids, layer), out.hidden_states[layer + 1])
        last = _block_output(tiny, ids, tiny.num_layers - 1)
        # HF's last hidden state already went through the final norm: the block output did not.
        assert not torch.allclose(last, out.hidden_states[-1], atol=1e-3)
        torch.testing.assert_close(tiny.head(last), out.logits, atol=1e-4, rtol=1e-4)


def _block_output(model, ids, layer):
    store = {}
    handle = model.arch.blocks[layer].register_forward_hook(
        lambda m, a, o: store.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model.hf(input_ids=ids)
    finally:
        handle.remove()
    return store["h"]


def test_builtin_descriptions():
    names = {spec.name for spec in BUILTIN_ARCHITECTURES}
    assert {"gpt2", "gptj", "gpt-neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3"} <= names
    assert {"gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma3_text"} <= set(
        ps.known_model_types())
    assert ps.known_model_types() == sorted(ps.known_model_types())


def test_unknown_architecture_names_the_class_and_the_fix():
    """Without a description (by model type or class), resolving by description alone says how to give one."""
    from transformers import LlamaForCausalLM

    class MysteryForCausalLM(LlamaForCausalLM):
        pass

    hf, _ = _fresh_llama("mystery_lm")
    hf.__class__ = MysteryForCausalLM
    with pytest.raises(UnknownArchitectureError) as info:
        architectures.resolve_architecture(hf)
    msg = str(info.value)
    assert isinstance(info.value, PatchscopesError)
    assert "unknown architecture: MysteryForCausalLM (config.model_type='mystery_lm')" in msg
    assert "register_architecture" in msg and "model_types=('mystery_lm',)" in msg
    assert "llama" in msg  # lists the known types


def test_register_architecture_makes_a_model_loadable(registry, tiny_llama, assert_same):
    hf, tok = _fresh_llama("mystery_lm")
    spec = ArchitectureSpec("mystery", ("mystery_lm",), blocks="model.layers", final_norm="model.norm",
                            unembed="lm_head", embed="model.embed_tokens")
    register_architecture(spec)
    assert "mystery_lm" in ps.known_model_types()
    lm = ps.LanguageModel(hf, tok, name="tiny-llama")
    assert lm.arch.spec is spec
    scopes = ps.plan_sweep(lm, [PROMPT, "Hi"], "token-identity", layers="all", positions="-1")
    scopes += ps.plan_sweep(lm, [PROMPT], "description", layers="1", positions="-1", max_new_tokens=4)
    # Same weights as the registered Llama: the same results, through the new description.
    assert_same(ps.run(scopes, lm), ps.run(scopes, tiny_llama), atol=1e-6)


def test_registering_twice(registry):
    spec = ArchitectureSpec("again", ("llama",), blocks="model.layers", final_norm="model.norm",
                            unembed="lm_head", embed="model.embed_tokens")
    with pytest.raises(PatchscopesError, match="'llama' is already described by 'llama'") as info:
        register_architecture(spec)
    assert "replace=True" in str(info.value)
    register_architecture(spec, replace=True)
    assert registry["llama"] is spec


def test_explicit_spec_overrides_the_registry():
    hf, tok = _fresh_llama()
    spec = ArchitectureSpec("custom", (), blocks="model.layers", final_norm="model.norm", unembed="lm_head",
                            embed="model.embed_tokens")
    assert ps.LanguageModel(hf, tok, spec=spec).arch.spec.name == "custom"


def test_alternative_paths():
    hf, tok = _fresh_llama()
    spec = ArchitectureSpec("alt", (), blocks="transformer.h|model.layers", final_norm="model.norm",
                            unembed="embed_out|lm_head", embed="model.embed_tokens")
    lm = ps.LanguageModel(hf, tok, spec=spec)
    assert lm.arch.blocks is hf.model.layers and lm.arch.unembed is hf.lm_head
    assert get_module(hf, "nothing|model.norm|lm_head") is hf.model.norm  # the first that resolves
    with pytest.raises(AttributeError, match=r"no attribute 'transformer'.*no attribute 'decoder'"):
        get_module(hf, "transformer.h|model.decoder")


def test_gpt_neox_head_alternatives():
    neox = tiny_model("gpt_neox")
    assert neox.arch.spec.unembed == "lm_head|embed_out"
    assert neox.arch.unembed is neox.hf.get_output_embeddings()


@pytest.mark.parametrize("field, path, message", [
    ("blocks", "model.blocks", r"LlamaModel has no attribute 'blocks' \(path 'model.blocks'\)"),
    ("final_norm", "model.ln_f|norm", "no attribute 'ln_f'.*no attribute 'norm'"),
    ("embed", "config", "'config' is a LlamaConfig, not a torch module"),
    ("blocks", "model.norm", "'model.norm' of LlamaForCausalLM is not a non-empty ModuleList"),
    ("unembed", "model.norm", "'model.norm' of LlamaForCausalLM is not a linear layer"),
])
def test_wrong_description(field, path, message):
    hf, tok = _fresh_llama()
    paths = dict(blocks="model.layers", final_norm="model.norm", unembed="lm_head", embed="model.embed_tokens")
    paths[field] = path
    with pytest.raises(PatchscopesError, match=message):
        ps.LanguageModel(hf, tok, spec=ArchitectureSpec("broken", (), **paths))


def test_wrong_description_mentions_the_fix():
    hf, tok = _fresh_llama()
    spec = ArchitectureSpec("broken", (), blocks="model.blocks", final_norm="model.norm", unembed="lm_head",
                            embed="model.embed_tokens")
    with pytest.raises(PatchscopesError) as info:
        ps.LanguageModel(hf, tok, spec=spec)
    assert "the 'broken' description does not fit LlamaForCausalLM" in str(info.value)
    assert "fix the attribute paths of its ArchitectureSpec" in str(info.value)


def test_block_count_must_match_the_config():
    hf, tok = _fresh_llama()
    hf.config.num_hidden_layers = 5
    with pytest.raises(PatchscopesError, match=r"has 3 blocks at 'model\.layers' but its config says 5"):
        ps.LanguageModel(hf, tok)
