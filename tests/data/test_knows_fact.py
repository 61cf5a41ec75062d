"""Batched greedy generation and the knows-the-fact check (the check's prompts are relations' verbalizations)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from patchscopes.engine.generation import greedy_generate
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.knows_fact import knows_fact


def test_greedy_generate_batched_equals_one_by_one_and_hf(tiny_llama):
    lm = tiny_llama
    prompts = ["Hi", "Hello there you", "abc", (1, 70, 71)]
    batched = greedy_generate(lm, prompts, 6, batch_size=4)
    assert batched == [greedy_generate(lm, [p], 6)[0] for p in prompts]
    for prompt, text in zip(prompts[:3], batched):
        ids = torch.tensor([lm.encode(prompt)])
        out = lm.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
        assert text == lm.decode(out[0, ids.shape[1]:])
    with pytest.raises(PatchscopesError, match="empty prompt"):
        greedy_generate(lm, [()], 3)
    with pytest.raises(PatchscopesError, match="max_new_tokens"):
        greedy_generate(lm, ["a"], 0)


def test_knows_fact_on_smollm2(smollm2):
    checks = knows_fact(smollm2, ["The capital city of France", "The capital city of France"], ["Paris", "Tokyo"],
                        max_new_tokens=8)
    assert [c.known for c in checks] == [True, False]
    assert "Paris" in checks[0].generated_text and checks[1].prompt == "The capital city of France"
    with pytest.raises(PatchscopesError, match="2 prompts but 1 objects"):
        knows_fact(smollm2, ["a", "b"], ["c"])
