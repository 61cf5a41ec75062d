"""The SelfIE preset equals SelfIE written plainly from its paper (injection into the input of layer k at
every placeholder, greedy generation, teacher-forced relevancy)."""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes.experiments.originals import selfie_interpret
from patchscopes.presets import SELFIE, selfie_prompt

SOURCE = "The Eiffel Tower is located in Paris"


def _compare(model, layers, max_new_tokens, atol=1e-4, engine="batched"):
    frame = ps.sweep(model, SOURCE, "selfie", layers=layers, positions=[-2], max_new_tokens=max_new_tokens,
                     engine=engine)
    prompt_ids, placeholders = selfie_prompt(model)
    source_ids = model.encode(SOURCE)
    for _, row in frame.iterrows():
        ids, relevancy = selfie_interpret(model, source_ids, int(row.source_layer), len(source_ids) - 2,
                                          prompt_ids, placeholders, k=SELFIE.target_layer + 1,
                                          max_new_tokens=max_new_tokens)
        generated = list(row.generated_token_ids)
        n = len(generated)
        where = f"layer {row.source_layer}: generated {generated}, the plain version {ids}"
        assert n > 0, f"nothing generated ({where})"
        assert generated == ids[:n], where
        # A generation shorter than max_new_tokens stopped where the plain version did (an end-of-sequence
        # token), or at one of the readout's stop strings.
        stop = [s for s in SELFIE.readout.stop if s]
        assert n == max_new_tokens or n == len(ids) or any(s in model.decode(generated) for s in stop), (
            f"stopped early, at no end-of-sequence token or stop string ({where})")
        assert row.relevancy == pytest.approx(relevancy[:n], abs=atol)


def test_selfie_equals_the_plain_version_on_tiny_models(tiny):
    _compare(tiny, "0,1", max_new_tokens=5)  # (HF's hidden_states of the last layer carry the final norm)


def test_selfie_reference_engine(tiny_llama):
    _compare(tiny_llama, "1", max_new_tokens=4, engine="reference")


@pytest.mark.slow
def test_selfie_equals_the_plain_version_on_smollm2(smollm2):
    _compare(smollm2, "6,12", max_new_tokens=10)


def test_selfie_prompt_has_five_placeholders(smollm2):
    ids, positions = selfie_prompt(smollm2)
    tokens = smollm2.token_strings([ids[p] for p in positions])
    assert sum(t.strip() == "_" for t in tokens) == 5
    assert "assistant" in smollm2.decode(ids) and smollm2.decode(ids).endswith("Sure, I will summarize the message:")


def test_selfie_refuses_a_target_prompt():
    with pytest.raises(ps.PatchscopesError, match="builds its own"):
        SELFIE.with_options(target_prompt="x")
