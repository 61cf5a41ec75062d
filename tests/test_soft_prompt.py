"""Soft-prompt targets: vectors in place of token embeddings, in both engines, saved with the model identity."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
from patchscopes.errors import PatchscopesError
from patchscopes.testing import tiny_model

TEXT = "cat -> cat\nhi -> hi\n?"


def _embeddings(model, ids):
    with torch.no_grad():
        return model.arch.embed(torch.tensor(ids)).float()


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_the_embeddings_of_a_prompt_as_a_soft_prompt_equal_the_prompt(family, engine):
    lm = tiny_model(family)
    ids = lm.encode(TEXT)
    n_before = 2
    soft = ps.SoftPrompt(_embeddings(lm, ids[n_before:-2]), before=tuple(ids[:n_before]), after=tuple(ids[-2:]))
    source = ps.Source("the cat sat on the mat", layer=1, position=-2)
    for readout in (ps.NextToken(top_k=4, full_logits=True), ps.Generate(max_new_tokens=4),
                    ps.Generate(max_new_tokens=4, relevancy=True)):
        plain = ps.run(ps.Patchscope(source, ps.Target(tuple(ids), 1, -3), readout), lm, engine=engine)[0]
        patched = ps.run(ps.Patchscope(source, ps.Target(soft, 1, -3), readout), lm, engine=engine)[0]
        assert patched.top_tokens == plain.top_tokens
        assert torch.allclose(torch.tensor(patched.top_probs), torch.tensor(plain.top_probs), atol=1e-5)
        if isinstance(readout, ps.Generate):
            assert patched.generated_text == plain.generated_text
            if readout.relevancy:  # scored on the soft prompt's vectors, not on the placeholders under them
                assert plain.readings.relevancy is not None and len(plain.readings.relevancy) > 0
                assert torch.allclose(torch.tensor(patched.readings.relevancy),
                                      torch.tensor(plain.readings.relevancy), atol=1e-5)
        else:
            assert torch.allclose(patched.logits, plain.logits, atol=1e-4)


def test_batched_equals_reference_with_several_soft_prompts(tiny_llama, assert_same):
    lm = tiny_llama
    torch.manual_seed(0)
    prompts = [ps.SoftPrompt(torch.randn(3, lm.hidden_size), after=" is"),
               ps.SoftPrompt(torch.randn(2, lm.hidden_size), before="Say: ")]
    scopes = [ps.Patchscope(ps.Source(text, layer, -1), ps.Target(p, t_layer, p.last_vector_position(lm)),
                            ps.NextToken(top_k=5))
              for text in ("one two", "three four five") for layer in (0, 2) for t_layer in (0, 1) for p in prompts]
    scopes.append(ps.Patchscope(ps.Source("one two", 0, -1), ps.Target(prompts[0], 0, 2),
                                ps.Generate(max_new_tokens=3)))
    assert_same(ps.run(scopes, lm, engine="batched"), ps.run(scopes, lm, engine="reference"))
    with_baseline = ps.run(scopes[:1], lm, baseline=True)[0]
    assert with_baseline.baseline is not None and with_baseline.target_prompt.startswith("SoftPrompt(")


def test_soft_prompt_file_round_trip_and_checks(tiny_llama, tmp_path):
    lm = tiny_llama
    prompt = ps.SoftPrompt(torch.randn(4, lm.hidden_size), before="A", after=(5, 6), name="mine")
    path = prompt.save(tmp_path / "p.safetensors", model=lm)
    back = ps.SoftPrompt.load(path, lm)
    assert torch.equal(back.vectors, prompt.vectors) and back.after == (5, 6) and back.before == "A"
    assert back.last_vector_position(lm) == len(lm.encode("A")) + 3
    with pytest.raises(PatchscopesError, match="another model"):
        ps.SoftPrompt.load(path, tiny_model("llama", seed=2))
    with pytest.raises(PatchscopesError, match="vectors of size"):
        ps.run(ps.Patchscope(ps.Source("x y", 0), ps.Target(ps.SoftPrompt(torch.zeros(2, 7)), 0, -1)), lm)
    with pytest.raises(PatchscopesError, match="token ids"):
        ps.run(ps.Patchscope(ps.Source("x y", 0), ps.Target(prompt, 0, "A")), lm)
    with pytest.raises(PatchscopesError, match=r"\(k, d\) tensor"):
        ps.SoftPrompt(torch.zeros(0, 3))
