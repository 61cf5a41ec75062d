"""Patchscope types, position resolution and the checks every scope passes before anything runs."""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes import Generate, NextToken, Patchscope, PatchscopesError, Source, Target
from patchscopes.scope import contains_placeholder, resolve_position

PROMPT = "The Eiffel Tower is in Paris"


# -- positions -----------------------------------------------------------------------------------------------
def test_integer_positions(tiny_llama):
    ids = tiny_llama.encode(PROMPT)
    n = len(ids)
    assert n == len(PROMPT) + 1  # <bos> + one byte each
    assert resolve_position(tiny_llama, PROMPT, ids, 0, "p") == 0
    assert resolve_position(tiny_llama, PROMPT, ids, -1, "p") == n - 1
    assert resolve_position(tiny_llama, PROMPT, ids, -n, "p") == 0
    for bad in (n, -n - 1, 100):
        with pytest.raises(PatchscopesError, match=f"p {bad} is out of range.*has {n} tokens"):
            resolve_position(tiny_llama, PROMPT, ids, bad, "p")


def test_substring_positions(tiny_llama, smollm2):
    ids = tiny_llama.encode(PROMPT)
    assert resolve_position(tiny_llama, PROMPT, ids, "Tower", "p") == PROMPT.index("Tower") + len("Tower")
    assert resolve_position(tiny_llama, PROMPT, ids, "Paris", "p") == len(ids) - 1
    prompt = "a cat, a dog, a cat"
    ids = tiny_llama.encode(prompt)
    assert resolve_position(tiny_llama, prompt, ids, "cat", "p") == len(ids) - 1  # the last occurrence
    assert resolve_position(tiny_llama, prompt, ids, "dog,", "p") == prompt.index("dog,") + len("dog,")
    # A whole word is preferred to a match inside a word: "x" is the placeholder, not the x of "next".
    prompt = "x marks the spot, next to it"
    ids = tiny_llama.encode(prompt)
    assert resolve_position(tiny_llama, prompt, ids, "x", "p") == 1
    # SmolLM2's BPE tokens: the last token of a word that spans several tokens.
    ids = smollm2.encode(PROMPT)
    tokens = smollm2.token_strings(ids)
    pos = resolve_position(smollm2, PROMPT, ids, "Eiffel", "p")
    assert "".join(tokens[: pos + 1]).endswith("Eiffel") and tokens[pos] != " E"
    assert tokens[resolve_position(smollm2, PROMPT, ids, "Tower", "p")] == " Tower"


def test_bad_substring_positions(tiny_llama):
    ids = tiny_llama.encode(PROMPT)
    with pytest.raises(PatchscopesError, match="'London' does not occur in the prompt 'The Eiffel"):
        resolve_position(tiny_llama, PROMPT, ids, "London", "source position")
    with pytest.raises(PatchscopesError, match="empty string"):
        resolve_position(tiny_llama, PROMPT, ids, "", "source position")
    with pytest.raises(PatchscopesError, match="must be an int or a substring"):
        resolve_position(tiny_llama, PROMPT, ids, True, "source position")
    with pytest.raises(PatchscopesError, match="must be an int or a substring, got float"):
        resolve_position(tiny_llama, PROMPT, ids, 1.5, "source position")


def test_contains_placeholder_wants_a_whole_word():
    assert contains_placeholder("Syria: a country, x", "x")
    assert contains_placeholder("x is", "x")
    assert not contains_placeholder("What comes next", "x")
    assert not contains_placeholder("no placeholder here", "x")


# -- readouts ------------------------------------------------------------------------------------------------
def test_readout_defaults():
    assert NextToken() == NextToken(top_k=10, full_logits=False, position=-1)
    g = Generate()
    assert (g.max_new_tokens, g.do_sample, g.stop) == (20, False, ())
    assert Patchscope(Source("a", 0), Target("b", 0)).readout == NextToken()


def test_generate_accepts_a_list_or_a_string_of_stops(tiny_llama):
    assert Generate(stop=[",", "\n"]).stop == (",", "\n")
    assert Generate(stop=",").stop == (",",)
    assert hash(Generate(stop=[","])) == hash(Generate(stop=(",",)))
    scope = Patchscope(Source(PROMPT, 1), Target("Tell me about x", 1), Generate(max_new_tokens=4, stop=[","]))
    assert len(ps.run(scope, tiny_llama)) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"stop": [1]}, "stop must be a string or a list of strings"),
    ({"do_sample": True, "temperature": 0}, "temperature must be positive"),
    ({"do_sample": True, "temperature": -1.0}, "temperature must be positive"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be 0"),
])
def test_bad_generate_settings(kwargs, message):
    with pytest.raises(PatchscopesError, match=message):
        Generate(**kwargs)


# -- checks before running -----------------------------------------------------------------------------------
def _error(model, scope, engine="batched") -> str:
    with pytest.raises(PatchscopesError) as info:
        ps.run(scope, model, engine=engine)
    return str(info.value)


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_layer_out_of_range(tiny_llama, engine):
    msg = _error(tiny_llama, Patchscope(Source(PROMPT, 3), Target(PROMPT, 0)), engine)
    assert "source layer 3 is out of range for tiny-llama (3 layers)" in msg and "0..2" in msg
    msg = _error(tiny_llama, Patchscope(Source(PROMPT, 0), Target(PROMPT, -4)), engine)
    assert "target layer -4 is out of range" in msg
    assert "must be an integer" in _error(tiny_llama, Patchscope(Source(PROMPT, "2"), Target(PROMPT, 0)))


def test_position_out_of_range(tiny_llama):
    n = len(tiny_llama.encode(PROMPT))
    msg = _error(tiny_llama, Patchscope(Source(PROMPT, 0, n), Target(PROMPT, 0)))
    assert f"source position {n} is out of range" in msg and f"has {n} tokens" in msg
    msg = _error(tiny_llama, Patchscope(Source(PROMPT, 0), Target("Hi", 0, 5)))
    assert "target position 5 is out of range: the prompt 'Hi' has 3 tokens" in msg


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompts(tiny_llama, prompt):
    assert "the source prompt is empty" in _error(tiny_llama, Patchscope(Source(prompt, 0), Target(PROMPT, 0)))
    assert "the target prompt is empty" in _error(tiny_llama, Patchscope(Source(PROMPT, 0), Target(prompt, 0)))


def test_readout_before_the_patch(tiny_llama):
    scope = Patchscope(Source(PROMPT, 0), Target("Tell me about x and more", 1, "x"), NextToken(position=2))
    msg = _error(tiny_llama, scope)
    assert "readout position 2 comes before the target position 15" in msg and "cannot change it" in msg
    # At the patched position itself is fine.
    ok = Patchscope(Source(PROMPT, 0), Target("Tell me about x and more", 1, "x"), NextToken(position=15))
    assert ps.run(ok, tiny_llama)[0].target_position == 15


def test_other_bad_readouts(tiny_llama):
    assert "top_k must be at least 1" in _error(tiny_llama, Patchscope(Source(PROMPT, 0), Target(PROMPT, 0),
                                                                      NextToken(top_k=0)))
    assert "max_new_tokens must be at least 1" in _error(
        tiny_llama, Patchscope(Source(PROMPT, 0), Target(PROMPT, 0), Generate(max_new_tokens=0)))
    assert "unknown readout" in _error(tiny_llama, Patchscope(Source(PROMPT, 0), Target(PROMPT, 0), "text"))


def test_not_a_patchscope_and_no_model(tiny_llama):
    with pytest.raises(PatchscopesError, match="expected a Patchscope, got tuple"):
        ps.run([(Source(PROMPT, 0), Target(PROMPT, 0))], tiny_llama)
    with pytest.raises(PatchscopesError, match="no model to run the source on"):
        ps.run(Patchscope(Source(PROMPT, 0), Target(PROMPT, 0)))


def test_errors_come_before_any_work(tiny_llama, monkeypatch):
    """A bad scope anywhere in the list fails the whole run before a single forward."""

    def boom(*args, **kwargs):
        raise AssertionError("a model ran")

    monkeypatch.setattr(tiny_llama, "forward", boom)
    scopes = [Patchscope(Source(PROMPT, 0), Target(PROMPT, 0))] * 5 + [Patchscope(Source(PROMPT, 9), Target(PROMPT, 0))]
    with pytest.raises(PatchscopesError, match="source layer 9"):
        ps.run(scopes, tiny_llama)


def test_models_on_source_and_target(tiny_llama, tiny_gpt2):
    """Source(model=...) overrides run's model; the target defaults to the source's model."""
    scope = Patchscope(Source(PROMPT, 1, model=tiny_gpt2), Target(PROMPT, 1))
    result = ps.run(scope, tiny_llama)[0]
    assert (result.source_model, result.target_model) == ("tiny-gpt2", "tiny-gpt2")
    scope = Patchscope(Source(PROMPT, 1, model=tiny_gpt2), Target(PROMPT, 1, model=tiny_llama))
    result = ps.run(scope)[0]
    assert (result.source_model, result.target_model) == ("tiny-gpt2", "tiny-llama")


def test_patch_result_fields(tiny_llama):
    scope = Patchscope(Source(PROMPT, -1, "Tower"), Target("Tell me about x", 1, "x"), NextToken(top_k=3))
    result = ps.run(scope, tiny_llama)[0]
    assert result.source_layer == 2 and result.source_token == "r"
    assert result.target_position == len("Tell me about x")
    assert result.mapping == "identity"
    assert result.top_token == result.readings.top_tokens[0]
    assert result.readings.top_probs == sorted(result.readings.top_probs, reverse=True)
    assert 0 < sum(result.readings.top_probs) <= 1 + 1e-6
    assert result.logits is None and result.generated_text is None
    assert tiny_llama.token_labels(result.readings.top_token_ids) == result.readings.top_tokens


def test_generate_names_its_sampling_cut_off_sample_top_k():
    """``top_k`` is how many tokens a next-token readout keeps; Generate's sampling cut-off is ``sample_top_k``
    (0.2's ``Generate(top_k=...)`` still works, with a warning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = ps.Generate(do_sample=True, sample_top_k=5)
    with pytest.warns(DeprecationWarning, match="sample_top_k"):
        old = ps.Generate(do_sample=True, top_k=5)
    assert old == new and new.sample_top_k == 5
    with pytest.raises(ps.PatchscopesError, match="sample_top_k"):
        ps.Generate(sample_top_k=-1)
