"""Layouts found from the model itself, matching by class, and the proof every layout passes at load."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

import patchscopes as ps
from patchscopes import ArchitectureSpec, PatchscopesError
from patchscopes.engine import capture_states
from patchscopes.errors import UnknownArchitectureError
from patchscopes.models.discovery import discover_architecture
from patchscopes.testing import tiny_model
from patchscopes.testing.families import tiny_family_model

PROMPT = "The Eiffel Tower is in Paris"


class MysteryForCausalLM(LlamaForCausalLM):
    """A class no description names: its layout must be discovered."""


def _mystery(model_type: str = "mystery_lm") -> ps.LanguageModel:
    """The weights of the tiny Llama in a class and model type patchscopes has never heard of."""
    lm = tiny_model("llama")
    lm.hf.__class__ = MysteryForCausalLM
    lm.hf.config.model_type = model_type
    return lm


def test_discovery_finds_the_declared_layout_of_every_tiny_family(tiny):
    spec = discover_architecture(tiny.hf)
    found = ps.LanguageModel(tiny.hf, tiny.tokenizer, spec=spec).arch
    assert spec.name.endswith("(discovered)")
    assert found.blocks is tiny.arch.blocks
    assert found.final_norm is tiny.arch.final_norm
    assert found.unembed is tiny.arch.unembed and found.embed is tiny.arch.embed
    assert found.softcap == tiny.arch.softcap


def test_an_unknown_class_loads_by_discovery_with_the_same_results(tiny_llama, assert_same):
    lm = _mystery()
    hf, tok = lm.hf, lm.tokenizer
    model = ps.LanguageModel(hf, tok, name="tiny-llama")
    assert model.arch.spec.name == "mystery_lm (discovered)"
    assert model.arch.spec.blocks == "model.layers" and model.arch.spec.final_norm == "model.norm"
    scopes = ps.plan_sweep(model, [PROMPT, "Hi"], "token-identity", layers="all", positions="-1")
    scopes += ps.plan_sweep(model, [PROMPT], "description", layers="1", positions="-1", max_new_tokens=4)
    assert_same(ps.run(scopes, model), ps.run(scopes, tiny_llama), atol=1e-6)


def test_a_known_class_with_another_model_type_matches_by_class():
    lm = tiny_model("llama")
    lm.hf.config.model_type = "exaone"  # transformers maps exaone to LlamaForCausalLM
    assert ps.LanguageModel(lm.hf, lm.tokenizer).arch.spec.name == "llama"


def test_discovery_failure_names_the_part_and_the_fix():
    lm = _mystery()
    lm.hf.config.num_hidden_layers = 5
    with pytest.raises(UnknownArchitectureError) as info:
        ps.LanguageModel(lm.hf, lm.tokenizer)
    message = str(info.value)
    assert "could not find the layout of MysteryForCausalLM (config.model_type='mystery_lm')" in message
    assert "no ModuleList of 5 blocks" in message
    assert "register_architecture(ArchitectureSpec(" in message and "spec= to load_model" in message


def test_the_final_norm_is_what_runs_between_the_last_block_and_the_head():
    """OPT keeps its final norm inside the decoder; GPT-2 and Falcon under transformer.*."""
    for family, norm in (("opt", "model.decoder.final_layer_norm"), ("falcon", "transformer.ln_f"),
                         ("gpt_bigcode", "transformer.ln_f")):
        hf, _ = tiny_family_model(family)
        assert discover_architecture(hf).final_norm == norm, family


@pytest.mark.parametrize("family, field, value", [
    ("granite", "logit_scale", "1/logits_scaling"),  # logits divided by config.logits_scaling
    ("cohere", "logit_scale", "logit_scale"),  # logits multiplied by config.logit_scale
    ("gemma2", "logit_softcap", "final_logit_softcapping"),
])
def test_output_transforms_are_read_from_the_config(family, field, value):
    hf, tok = tiny_family_model(family)
    if family == "granite":
        hf.config.logits_scaling = 4.0  # the default, 1, changes nothing
    spec = discover_architecture(hf)
    assert getattr(spec, field) == value
    model = ps.LanguageModel(hf, tok, spec=spec)  # the proof holds the logit lens to the model's logits
    ids = torch.tensor([model.encode(PROMPT)])
    with torch.no_grad():
        logits = model.hf(input_ids=ids).logits
        lens = model.head(capture_states(model, [ids[0].tolist()], [list(range(ids.shape[1]))], [-1])[:, 0])
    torch.testing.assert_close(lens, logits[0], atol=1e-4, rtol=1e-4)


def test_the_text_stack_of_a_multimodal_model():
    """Gemma 3 from 4B up is a *ForConditionalGeneration: patched and read through its language model."""
    hf, tok = tiny_family_model("gemma3")
    model = ps.LanguageModel(hf, tok, name="tiny-gemma3-vl")
    assert type(hf).__name__ == "Gemma3ForConditionalGeneration"
    assert model.arch.spec.blocks == "model.language_model.layers"
    assert model.arch.softcap is None or model.arch.spec.logit_softcap == "final_logit_softcapping"
    scopes = ps.plan_sweep(model, [PROMPT], "token-identity", layers="all", positions="0,-1")
    results = ps.run(scopes, model)
    expected = ps.run(scopes, model, engine="reference")
    assert [r.readings.top_token_ids for r in results] == [r.readings.top_token_ids for r in expected]


# -- the proof ---------------------------------------------------------------------------------------------
def test_a_wrong_final_norm_fails_the_proof_with_one_clear_message():
    lm = tiny_model("llama")
    spec = ArchitectureSpec("no-norm", (), blocks="model.layers", final_norm="", unembed="lm_head",
                            embed="model.embed_tokens")
    with pytest.raises(PatchscopesError) as info:
        ps.LanguageModel(lm.hf, lm.tokenizer, name="tiny", spec=spec)
    message = str(info.value)
    assert "tiny (LlamaForCausalLM, layout 'no-norm') fails the load-time proof" in message
    assert "the logit lens at the last layer differs from the model's logits" in message
    assert "spec=ArchitectureSpec(" in message


def test_blocks_off_the_residual_stream_fail_the_proof():
    """Blocks whose output the model throws away: a patch there cannot reach the logits."""
    lm = tiny_model("llama")
    hf = lm.hf
    hf.model.shadow = torch.nn.ModuleList(torch.nn.Identity() for _ in range(3))
    forward = hf.model.norm.forward

    def norm_after_shadow(hidden):
        for block in hf.model.shadow:
            block(hidden.clone())
        return forward(hidden)

    hf.model.norm.forward = norm_after_shadow
    spec = ArchitectureSpec("shadow", (), blocks="model.shadow", final_norm="model.norm", unembed="lm_head",
                            embed="model.embed_tokens")
    with pytest.raises(PatchscopesError, match="are not the blocks of the residual stream"):
        ps.LanguageModel(hf, lm.tokenizer, spec=spec)


def test_a_model_without_a_key_value_cache_runs_on_the_hooked_path(assert_same):
    hf, tok = tiny_family_model("mamba")
    model = ps.LanguageModel(hf, tok, name="tiny-mamba")
    assert not model.fast_path.batched and "cache" in model.fast_path.reason
    scopes = ps.plan_sweep(model, [PROMPT, "Hi"], "token-identity", layers="all", positions="-1")
    with pytest.warns(UserWarning, match="fast path does not apply .* running the reference engine"):
        results = ps.run(scopes, model)
    assert_same(results, ps.run(scopes, model, engine="reference"), atol=0)


def test_embedded_models_have_the_fast_path_and_are_proved_once(smollm2):
    assert smollm2.fast_path.batched and smollm2.fast_path.reason is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ps.load_model("smollm2-135m")
    assert again.fast_path is smollm2.fast_path  # the same checkpoint, device and dtype: proved once


def test_a_multimodal_folder_loads_through_its_language_model(tmp_path):
    """LLaVA has no causal-LM class: load_model takes its image-text-to-text model and reads the text stack."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from patchscopes.testing import byte_tokenizer, sharpen
    from patchscopes.testing.families import tiny_family_config

    tok = byte_tokenizer()
    config = tiny_family_config("llava", len(tok))
    assert isinstance(AutoConfig.for_model("llava"), type(config))
    torch.manual_seed(0)
    sharpen(AutoModelForImageTextToText.from_config(config)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = ps.load_model(str(tmp_path))
    assert type(model.hf).__name__ == "LlavaForConditionalGeneration"
    assert model.arch.spec.blocks == "model.language_model.layers" and model.fast_path.batched
    scopes = ps.plan_sweep(model, [PROMPT], "token-identity", layers="all", positions="-1")
    expected = ps.run(scopes, model, engine="reference")
    assert [r.readings.top_token_ids for r in ps.run(scopes, model)] == [r.readings.top_token_ids for r in expected]


def test_a_model_whose_padding_is_not_exact_reads_one_prompt_at_a_time():
    """BART's decoder ignores the position ids: left-padded rows would shift. capture_states and
    greedy_generate then run each prompt alone, and agree with single-prompt runs."""
    hf, tok = tiny_family_model("bart")
    model = ps.LanguageModel(hf, tok, name="tiny-bart-decoder")
    assert not model.fast_path.left_padding and "left-padded" in model.fast_path.reason
    prompts = [model.encode(PROMPT), model.encode("Hi")]
    positions = [[0, len(prompts[0]) - 1], [1]]
    together = capture_states(model, prompts, positions)
    alone = torch.cat([capture_states(model, [p], [q]) for p, q in zip(prompts, positions)])
    torch.testing.assert_close(together, alone)
    texts = ps.greedy_generate(model, [PROMPT, "Hi"], 4)
    assert texts == [ps.greedy_generate(model, [p], 4)[0] for p in (PROMPT, "Hi")]
