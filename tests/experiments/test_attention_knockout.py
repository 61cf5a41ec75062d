"""Attention knockout as patchscopes equals Geva et al.'s procedure written plainly (a fresh causal mask with
the blocked edges removed, one forward per window)."""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes.experiments.attention_knockout import attention_knockout, blocked_positions
from patchscopes.experiments.originals import geva_knockout

# Families without sliding-window attention (the plain version builds a full causal mask).
FULL_ATTENTION = ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"]


def _compare(model, prompt, subject, window, atol=1e-5):
    result = attention_knockout(model, prompt, subject, window=window)
    ids = model.encode(prompt)
    sets = blocked_positions(len(ids), result.subject)
    assert len(result.records) == model.num_layers * len(sets)
    for record in result.records:
        probs = geva_knockout(model, ids, record["layers"], len(ids) - 1, sets[record["blocked"]])
        assert record["p_knocked"] == pytest.approx(float(probs[result.prediction_id]), abs=atol)
        expected = (record["p_knocked"] - result.p_original) / result.p_original
        assert record["relative_change"] == pytest.approx(expected)
    return result


@pytest.mark.parametrize("family", FULL_ATTENTION)
def test_equals_geva_on_tiny_models(family):
    from patchscopes.testing import tiny_model

    _compare(tiny_model(family), "Ann is in Rome", "Ann", window=2)


@pytest.mark.slow
def test_equals_geva_on_smollm2(smollm2):
    result = _compare(smollm2, "The Eiffel Tower is located in the city of", "The Eiffel Tower", window=9,
                      atol=1e-4)
    assert result.prediction.strip() == "Paris"
    assert result.figure().data


def test_sets_and_bad_input(tiny_llama):
    assert blocked_positions(5, (1, 2)) == {"subject": (1, 2), "non-subject": (0, 3), "last": (4,)}
    with pytest.raises(ps.PatchscopesError, match="window"):
        attention_knockout(tiny_llama, "Ann is in Rome", "Ann", window=4)
    with pytest.raises(ps.PatchscopesError, match="does not occur"):
        attention_knockout(tiny_llama, "Ann is in Rome", "Bob", window=2)


def test_unmaskable_attention_is_refused(tiny_llama, monkeypatch):
    monkeypatch.setattr(tiny_llama.hf.config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ps.PatchscopesError, match="maskable"):
        attention_knockout(tiny_llama, "Ann is in Rome", "Ann", window=2)
