"""Presets (token identity, logit lens, description) and the sweeps built from them."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import patchscopes as ps
from patchscopes import Generate, NextToken, PatchscopesError, Source

PROMPT = "The Eiffel Tower is in Paris"


def test_registry():
    assert set(ps.PRESETS) == {"token-identity", "logit-lens", "description", "selfie", "self-explanation"}
    assert ps.get_preset("logit-lens") is ps.LOGIT_LENS
    assert ps.get_preset(ps.TOKEN_IDENTITY) is ps.TOKEN_IDENTITY
    with pytest.raises(PatchscopesError, match="unknown scope 'tuned-lens'") as info:
        ps.get_preset("tuned-lens")
    assert "token-identity" in str(info.value)


@pytest.mark.parametrize("name", list(ps.PRESETS))
def test_every_preset_has_a_one_line_description(name):
    description = ps.PRESETS[name].description
    assert description.strip() and "\n" not in description and len(description) <= 200, name


def test_unknown_preset_in_a_sweep(tiny_llama):
    with pytest.raises(PatchscopesError, match="unknown scope 'identity'"):
        ps.sweep(tiny_llama, PROMPT, "identity")


def test_token_identity_build(tiny_llama):
    scope = ps.TOKEN_IDENTITY.build(Source(PROMPT, 1, "Tower"), source_model=tiny_llama)
    assert scope.target.prompt == ps.TOKEN_IDENTITY_PROMPT == "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
    assert (scope.target.layer, scope.target.position) == (1, -1)
    assert scope.readout == NextToken()
    assert scope.target.model is None and scope.target.mapping is None


def test_logit_lens_build(tiny_llama):
    scope = ps.LOGIT_LENS.build(Source(PROMPT, 0, "Tower"), source_model=tiny_llama)
    assert scope.target.prompt == PROMPT  # T = S
    assert scope.target.layer == tiny_llama.num_layers - 1
    assert scope.target.position == "Tower"
    assert scope.readout.position == "Tower"  # read where the patch went, not at the last token


def test_logit_lens_reads_at_the_source_position(tiny_llama):
    result = ps.run(ps.LOGIT_LENS.build(Source(PROMPT, 0, 3), source_model=tiny_llama), tiny_llama)[0]
    assert (result.source_position, result.target_position, result.target_layer) == (3, 3, 2)
    # The reading is the final norm and unembedding of h itself, whatever comes after position 3.
    with torch.no_grad():
        logits = tiny_llama.head(tiny_llama.hf(**tiny_llama.tokenizer(PROMPT, return_tensors="pt"),
                                               output_hidden_states=True).hidden_states[1][0, 3])
    assert result.readings.top_token_ids[0] == int(logits.argmax())
    assert result.readings.top_probs[0] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


def test_description_build(tiny_llama):
    scope = ps.ENTITY_DESCRIPTION.build(Source("Paris", 2), source_model=tiny_llama)
    assert scope.target.prompt == ps.ENTITY_DESCRIPTION_PROMPT and scope.target.prompt.endswith(", x")
    assert (scope.target.layer, scope.target.position) == (2, "x")
    assert isinstance(scope.readout, Generate) and scope.readout.stop == (",", "\n")
    result = ps.run(scope, tiny_llama)[0]
    assert result.target_position == len(tiny_llama.encode(ps.ENTITY_DESCRIPTION_PROMPT)) - 1
    assert isinstance(result.generated_text, str)


def test_target_layer_options(tiny_llama, wide_llama):
    src = Source(PROMPT, -1)
    assert ps.TOKEN_IDENTITY.build(src, source_model=tiny_llama).target.layer == 2  # "same", resolved
    assert ps.TOKEN_IDENTITY.with_options(target_layer=0).build(src, source_model=tiny_llama).target.layer == 0
    cross = ps.LOGIT_LENS.build(src, source_model=tiny_llama, target_model=wide_llama)
    assert cross.target.layer == wide_llama.num_layers - 1 == 3  # "last" of the target model
    assert cross.target.model is wide_llama
    with pytest.raises(PatchscopesError, match="source layer 5 is out of range"):
        ps.TOKEN_IDENTITY.build(Source(PROMPT, 5), source_model=tiny_llama)


def test_with_options():
    preset = ps.TOKEN_IDENTITY.with_options(target_prompt="a -> a\n?", top_k=3)
    assert (preset.target_prompt, preset.target_position, preset.readout.top_k) == ("a -> a\n?", -1, 3)
    assert ps.TOKEN_IDENTITY.readout.top_k == 10  # presets are immutable
    gen = ps.TOKEN_IDENTITY.with_options(max_new_tokens=5, top_k=4)
    assert gen.readout == Generate(max_new_tokens=5, top_tokens=4)
    desc = ps.ENTITY_DESCRIPTION.with_options(target_prompt="x: a thing", max_new_tokens=3, top_k=2)
    assert (desc.target_position, desc.readout.max_new_tokens, desc.readout.top_tokens) == ("x", 3, 2)
    assert desc.readout.stop == (",", "\n")
    custom = NextToken(top_k=2, full_logits=True)
    assert ps.LOGIT_LENS.with_options(readout=custom).readout is custom


@pytest.mark.parametrize("prompt", ["no placeholder here", "What comes next", "Describe X"])
def test_description_prompt_needs_the_placeholder(tiny_llama, prompt):
    with pytest.raises(PatchscopesError, match="has no placeholder 'x'") as info:
        ps.sweep(tiny_llama, PROMPT, "description", target_prompt=prompt)
    assert "end the prompt with 'x'" in str(info.value)


def test_description_with_own_prompt_patches_the_placeholder(tiny_llama):
    prompt = "Tell me about x, and be brief"
    frame = ps.sweep(tiny_llama, PROMPT, "description", layers="1", positions="-1", target_prompt=prompt,
                     max_new_tokens=3)
    assert list(frame.target_position) == [prompt.index("x") + 1]
    assert list(frame.target_prompt) == [prompt]


def test_plan_sweep_size_and_coordinates(tiny_llama):
    prompts = [PROMPT, "Hi"]
    scopes = ps.plan_sweep(tiny_llama, prompts, "token-identity", layers="0,2", positions="0,-1",
                           target_layers="all")
    assert len(scopes) == 2 * 2 * 2 * 3  # prompts x layers x positions x target layers
    assert {(s.source.layer, s.target.layer) for s in scopes} == {(a, b) for a in (0, 2) for b in (0, 1, 2)}
    assert {s.source.position for s in scopes} == {0, len(PROMPT)} | {0, 2}
    all_positions = ps.plan_sweep(tiny_llama, prompts, "logit-lens", layers=1)
    assert len(all_positions) == len(tiny_llama.encode(PROMPT)) + len(tiny_llama.encode("Hi"))
    by_word = ps.plan_sweep(tiny_llama, PROMPT, "token-identity", layers=1, positions=["Eiffel", "Paris"])
    assert [s.source.position for s in by_word] == ["Eiffel", "Paris"]


def test_plan_sweep_rejects_empty_prompts(tiny_llama):
    with pytest.raises(PatchscopesError, match="no source prompts"):
        ps.plan_sweep(tiny_llama, [], "token-identity")
    with pytest.raises(PatchscopesError, match="a source prompt is empty"):
        ps.plan_sweep(tiny_llama, [PROMPT, " "], "token-identity")


def test_sweep_frame(tiny_llama):
    frame = ps.sweep(tiny_llama, [PROMPT, "Hi"], "token-identity", layers="0:2", positions="-1", top_k=3,
                     baseline=True)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert list(frame.columns[:2]) == ["scope", "source_model"]
    assert set(frame.scope) == {"token-identity"}
    for col in ("source_layer", "source_position", "source_token", "target_layer", "target_position",
                "top_token", "top_tokens", "top_token_ids", "top_probs", "top_prob", "baseline_top_tokens"):
        assert col in frame.columns, col
    assert frame.top_tokens.map(len).eq(3).all()
    assert (frame.top_token == frame.top_tokens.str[0]).all()
    assert (frame.top_prob == frame.top_probs.str[0]).all()
    assert frame.baseline_top_tokens.map(lambda b: isinstance(b, list) and len(b) == 3).all()
    # Same target for every row: one baseline.
    assert frame.baseline_top_probs.map(tuple).nunique() == 1


def test_sweep_with_description_generates(tiny_llama):
    frame = ps.sweep(tiny_llama, "Paris", "description", layers="0,1", positions="-1", max_new_tokens=4)
    assert set(frame.scope) == {"description"}
    assert frame.generated_text.map(lambda t: isinstance(t, str)).all()
    assert frame.generated_token_ids.map(lambda ids: len(ids) <= 4).all()


def test_self_explanation_prompt_in_the_chat_template(smollm2):
    """SmolLM2 has a chat template: the question is the user's turn, the reply opens the assistant's, and the
    positions are the two X tokens."""
    ids, positions = ps.self_explanation_prompt(smollm2)
    text = smollm2.decode(ids)
    assert "<|im_start|>" in smollm2.token_strings(ids)  # the template's special tokens, kept as tokens
    assert "\nuser\nWhat is the meaning" in text and text.endswith('The meaning of the word "X" is "')
    assert len(positions) == 2
    assert smollm2.token_strings([ids[p] for p in positions]) == ["X", "X"]


def test_self_explanation_prompt_in_plain_text(tiny_llama):
    """A tokenizer without a chat template gets the plain question-and-answer form."""
    assert not getattr(tiny_llama.tokenizer, "chat_template", None)
    ids, positions = ps.self_explanation_prompt(tiny_llama)
    text = tiny_llama.decode(ids)
    assert text.startswith("Question: What is the meaning") and "\nAnswer: The meaning" in text
    assert [text.count("X")] == [2] and len(positions) == 2
    with pytest.raises(PatchscopesError, match="no placeholder 'Y'"):
        ps.self_explanation_prompt(tiny_llama, placeholder="Y")


def test_sweep_takes_preset_and_0_2s_scope_keyword(tiny_llama):
    """``preset`` names the preset (a scope is a Patchscope); ``scope=`` still works, with a warning."""
    new = ps.sweep(tiny_llama, "Paris is nice", preset="logit-lens", layers="0", positions="-1")
    with pytest.warns(DeprecationWarning, match="preset="):
        old = ps.sweep(tiny_llama, "Paris is nice", scope="logit-lens", layers="0", positions="-1")
    assert new.equals(old) and new["scope"].tolist() == ["logit-lens"]
    with pytest.warns(DeprecationWarning):
        planned = ps.plan_sweep(tiny_llama, "Paris is nice", scope="logit-lens", layers="0", positions="-1")
    assert planned == ps.plan_sweep(tiny_llama, "Paris is nice", "logit-lens", layers="0", positions="-1")
