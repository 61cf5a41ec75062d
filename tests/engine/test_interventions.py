"""Several writes, embedding writes and noise, MLP/attention sites, attention knockout and answer
probabilities: the batched engine agrees with the reference engine on every tiny family and on SmolLM2."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
from patchscopes import AnswerProbs, AttentionKnockout, EmbeddingNoise, Generate, Patchscope, Source, Target, Write

PROMPT = "The Eiffel Tower is in the city of"
SUBJECT = "Eiffel Tower"


def _assert_answers_agree(got, expected, atol=1e-4):
    for a, b in zip(got, expected):
        assert a.readings.top_token_ids[0] == b.readings.top_token_ids[0]
        assert a.readings.answer_probs is not None
        diff = max(abs(p - q) for p, q in zip(a.readings.answer_probs, b.readings.answer_probs))
        assert diff <= atol, diff


def _tracing_scopes(model, layers, kinds=("block",)):
    """Causal-tracing-like scopes: noise on the subject, a clean state restored at (l, i), p(answers)."""
    n = len(model.encode(PROMPT))
    noise = EmbeddingNoise(SUBJECT, scale=0.5, seed=3)
    readout = AnswerProbs(answers=(" Paris", " Rome"), top_k=3)
    scopes = []
    for layer in layers:
        for pos in range(n):
            for site in kinds:
                scopes.append(Patchscope(Source(PROMPT, layer, pos, site=site),
                                         Target(PROMPT, layer, pos, site=site, noise=noise), readout))
    scopes.append(Patchscope(None, Target(PROMPT, 0, noise=noise), readout))  # the corrupted run alone
    return scopes


def test_tracing_scopes_agree_on_tiny_models(tiny):
    scopes = _tracing_scopes(tiny, [0, 2], kinds=("block", "mlp", "attn"))
    _assert_answers_agree(ps.run(scopes, tiny), ps.run(scopes, tiny, engine="reference"))


def test_tracing_scopes_agree_on_smollm2(smollm2):
    scopes = _tracing_scopes(smollm2, [3, 20], kinds=("block", "mlp"))
    _assert_answers_agree(ps.run(scopes, smollm2), ps.run(scopes, smollm2, engine="reference"), atol=2e-4)


def test_several_writes_and_embedding_writes_agree(tiny, assert_same):
    steer = torch.linspace(-1, 1, tiny.hidden_size)
    scopes = [
        # SelfIE-like: f(h) at several placeholder positions, generation
        Patchscope(Source(PROMPT, 1, "Tower"),
                   Target("_ _ _ : means", 1, 0, writes=(Write(1, 2), Write(1, 4))), Generate(max_new_tokens=4)),
        # an embedding-layer patch plus an added (steering) vector
        Patchscope(Source(PROMPT, "embeddings", "Tower"),
                   Target("a b c d", "embeddings", 2, writes=(Write(1, 3, steer, add=True),))),
        # f(h) added to the state
        Patchscope(Source(PROMPT, 2, -1), Target("a b c d", 0, 1, add=True)),
    ]
    assert_same(ps.run(scopes, tiny), ps.run(scopes, tiny, engine="reference"))


def test_knockout_agrees_on_tiny_models(tiny):
    readout = AnswerProbs(answers=(" P",), top_k=3)
    scopes = [Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout((layer,), SUBJECT)), readout)
              for layer in range(tiny.num_layers)]
    scopes.append(Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout((0, 1), (0, 1, 2), query=5)),
                             readout))
    every_key = tuple(range(len(tiny.encode(PROMPT)) - 1))
    scopes.append(Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout((0, 1, 2), every_key)), readout))
    got, ref = ps.run(scopes, tiny), ps.run(scopes, tiny, engine="reference")
    _assert_answers_agree(got, ref)
    plain = ps.run(Patchscope(None, Target(PROMPT, 0, noise=EmbeddingNoise(0, scale=0.0)), readout), tiny)[0]
    assert any(abs(r.readings.answer_probs[0] - plain.readings.answer_probs[0]) > 1e-4 for r in got)


def test_zero_noise_and_self_restore_change_nothing(tiny_llama):
    base = ps.run(Patchscope(None, Target(PROMPT, 0, noise=EmbeddingNoise(SUBJECT, scale=0.0)),
                             AnswerProbs(answers=(" P",))), tiny_llama)[0]
    clean = ps.run(Patchscope(Source(PROMPT, 1, 3), Target(PROMPT, 1, 3), AnswerProbs(answers=(" P",))),
                   tiny_llama)[0]
    assert base.readings.answer_probs[0] == pytest.approx(clean.readings.answer_probs[0], abs=1e-5)


def test_noise_is_reproducible_from_its_seed(tiny_llama):
    def p(seed):
        scope = Patchscope(None, Target(PROMPT, 0, noise=EmbeddingNoise(SUBJECT, 1.0, seed)),
                           AnswerProbs(answers=(" P",)))
        return ps.run(scope, tiny_llama)[0].readings.answer_probs[0]

    assert p(1) == p(1) and p(1) != p(2)


def test_bad_interventions_are_refused(tiny_llama):
    with pytest.raises(ps.PatchscopesError, match="does not occur"):
        ps.run(Patchscope(None, Target(PROMPT, 0, noise=EmbeddingNoise("Louvre"))), tiny_llama)
    with pytest.raises(ps.PatchscopesError, match="empty"):
        AnswerProbs(answers=("",))
    with pytest.raises(ps.PatchscopesError, match="after the query"):
        ps.run(Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout((0,), (9,), query=2))), tiny_llama)
    with pytest.raises(ps.PatchscopesError, match="out of range"):
        ps.run(Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout((7,), SUBJECT))), tiny_llama)


def _spy_plan(monkeypatch) -> list:
    import patchscopes.engine.batched as batched

    groups: list = []
    original = batched.plan

    def spy(jobs, **kwargs):
        out = original(jobs, **kwargs)
        groups.extend(out)
        return out

    monkeypatch.setattr(batched, "plan", spy)
    return groups


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_restores_and_window_writes_take_one_staircase(family, monkeypatch, assert_same):
    """Restored block outputs, MLP and attention windows and the corrupted run itself: one group, whose rows
    skip the tokens before their first write and the blocks below it."""
    from patchscopes.testing import tiny_model

    model = tiny_model(family)
    groups = _spy_plan(monkeypatch)
    scopes = _tracing_scopes(model, [0, 1, 2], kinds=("block", "mlp", "attn"))
    scopes.append(Patchscope(None, Target(PROMPT, 0, noise=scopes[0].target.noise, writes=tuple(
        Write(layer, 3, torch.randn(model.hidden_size), site="mlp") for layer in (1, 2))), scopes[0].readout))
    got = ps.run(scopes, model)
    # (the restore of the last block at the last token is read through the logit lens)
    assert sorted((g.strategy, len(g.jobs)) for g in groups) == [("lens", 1), ("staircase", len(scopes) - 1)]
    _assert_answers_agree(got, ps.run(scopes, model, engine="reference"))


def test_noise_samples_share_a_staircase_and_jobs_alone_run_whole(tiny_llama, monkeypatch):
    """Two noise samples are two base runs of one group; jobs alone on prompts of one length share a forward."""
    groups = _spy_plan(monkeypatch)
    readout = AnswerProbs(answers=(" Paris",), top_k=2)
    scopes = []
    for seed in (1, 2):
        noise = EmbeddingNoise(SUBJECT, scale=0.5, seed=seed)
        scopes += [Patchscope(Source(PROMPT, layer, 4), Target(PROMPT, layer, 4, noise=noise), readout)
                   for layer in range(tiny_llama.num_layers)]
    alone = ["The Louvre is in the city of", "The Prado is in the city of:"]
    assert len({len(tiny_llama.encode(p)) for p in alone}) == 1
    scopes += [Patchscope(Source(PROMPT, 1, 4), Target(p, 1, 3), readout) for p in alone]
    got = ps.run(scopes, tiny_llama)
    assert sorted((g.strategy, len(g.jobs)) for g in groups) == [("rows", 2), ("staircase", 6)]
    _assert_answers_agree(got, ps.run(scopes, tiny_llama, engine="reference"))


def test_writes_and_knockout_agree_on_smollm2(smollm2, assert_same):
    scopes = [
        Patchscope(Source(PROMPT, 5, "Tower"), Target("_ _ _ means", 0, 0, writes=(Write(0, 1), Write(0, 2))),
                   Generate(max_new_tokens=4, relevancy=True)),
        Patchscope(Source(PROMPT, "embeddings", "Tower"), Target(PROMPT, "embeddings", 3)),
        Patchscope(None, Target(PROMPT, 0, knockout=AttentionKnockout(tuple(range(15, 24)), SUBJECT)),
                   AnswerProbs(answers=(" Paris",))),
    ]
    got, ref = ps.run(scopes, smollm2), ps.run(scopes, smollm2, engine="reference")
    assert_same(got, ref)
    assert got[0].readings.relevancy == pytest.approx(ref[0].readings.relevancy, abs=1e-4)
    assert got[2].readings.answer_probs == pytest.approx(ref[2].readings.answer_probs, abs=1e-4)
