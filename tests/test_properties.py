"""Property-based tests (hypothesis): the spec parser, the notation types and the command line's options, fed
arbitrary input, raise nothing but :class:`PatchscopesError`; specs round-trip through their canonical form.

Each test is bounded (``max_examples``, no deadline: the machine may be shared) so that the whole file runs in
well under a minute in the default test run.
"""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import patchscopes as ps
from patchscopes import PatchscopesError, parse_spec
from patchscopes.cli import options as opt
from patchscopes.specs import check_spec, format_spec

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PROMPT = "Hi you"

# Text that looks like a spec: digits of several scripts, signs, separators, spaces, a few letters.
SPEC_CHARS = st.sampled_from([*"0123456789-:, _+.aAl", "٣", "３", "\u00a0", "\t", "all", "99999999999999999999"])
spec_like = st.lists(SPEC_CHARS, max_size=12).map("".join)
any_text = st.one_of(spec_like, st.text(max_size=12))
bound = st.one_of(st.none(), st.integers(-40, 40), st.integers(-(10**25), 10**25))
sizes = st.integers(0, 40)
# Surrogates (what argv holds for bytes that are not UTF-8) are not in st.text() by default.
surrogates = st.sampled_from(["\ud800", "a\udce9b", "\udcff", "x\udfff"])
prompts = st.one_of(st.text(min_size=0, max_size=8), surrogates, st.sampled_from([PROMPT, " ", "Hi"]))


def _parse(spec, size):
    """parse_spec, its result checked: sorted, unique, in range, never more than size indices."""
    out = parse_spec(spec, size)
    assert out == sorted(set(out)) and all(0 <= i < size for i in out) and len(out) <= size
    return out


# -- the spec parser --------------------------------------------------------------------------------------------
@FAST
@given(spec=any_text, size=sizes)
@example(spec="0:10000000000000", size=30)
@example(spec="0:99999999999999999999", size=30)
@example(spec="1 2", size=30)
@example(spec="1_0", size=30)
def test_any_text_is_a_spec_or_a_patchscopes_error(spec, size):
    try:
        out = _parse(spec, size)
    except PatchscopesError as err:
        assert err.hint, f"no hint for {spec!r}: {err.message}"
        return
    assert format_spec(out) if out else True  # a result can be written back


@FAST
@given(spec=any_text)
def test_check_spec_agrees_with_parse_spec_on_syntax(spec):
    try:
        check_spec(spec)
    except PatchscopesError:
        for size in (1, 30, 10**6):
            with pytest.raises(PatchscopesError):
                parse_spec(spec, size)


@FAST
@given(start=bound, stop=bound, step=st.one_of(st.none(), st.integers(1, 12)), size=st.integers(1, 40))
def test_a_range_is_pythons_slice_or_an_error(start, stop, step, size):
    """A range ``start:stop:step`` gives exactly Python's slice of ``range(size)``, or is refused: never clipped
    (a bound outside the dimension, or an index reached past the end, is an error)."""
    text = f"{'' if start is None else start}:{'' if stop is None else stop}" + ("" if step is None else f":{step}")
    expected = list(range(size)[slice(start, stop, step)])
    try:
        out = _parse(text, size)
    except PatchscopesError as err:
        assert err.hint
        inside = all(b is None or -size <= b <= size for b in (start, stop)) and (start is None or start < size)
        assert not (inside and expected), f"{text} on {size} was refused, but it stays inside and selects {expected}"
        return
    assert out == expected


@FAST
@given(indices=st.sets(st.integers(0, 60), min_size=1), extra=st.integers(0, 5))
def test_specs_round_trip_through_their_canonical_form(indices, extra):
    size = max(indices) + 1 + extra
    text = format_spec(sorted(indices))
    assert _parse(text, size) == sorted(indices)
    assert format_spec(_parse(text, size)) == text  # canonical: written the same way again


@FAST
@given(spec=spec_like, size=st.integers(1, 40))
def test_a_parsed_spec_reads_back_from_its_canonical_form(spec, size):
    try:
        out = _parse(spec, size)
    except PatchscopesError:
        return
    assert _parse(format_spec(out), size) == out


@FAST
@given(spec=st.one_of(st.integers(-(10**30), 10**30), st.lists(st.one_of(st.integers(-50, 50), st.floats(),
                                                                         st.booleans(), st.text(max_size=2)),
                                                               max_size=5),
                      st.booleans(), st.floats(), st.none()),
       size=sizes)
def test_python_specs_raise_only_patchscopes_errors(spec, size):
    with contextlib.suppress(PatchscopesError):
        _parse(spec, size)


# -- the notation types -----------------------------------------------------------------------------------------
layers = st.one_of(st.integers(-6, 6), st.integers(-(10**20), 10**20), st.sampled_from(["embeddings", "3", "x"]),
                   st.floats(allow_nan=True), st.none(), st.booleans())
positions = st.one_of(st.integers(-10, 10), st.integers(-(10**20), 10**20), st.text(max_size=4), surrogates,
                      st.floats(), st.none(), st.booleans(), st.tuples(st.integers(-3, 3)))
numbers = st.one_of(st.integers(-3, 300), st.integers(10**6, 10**20), st.floats(allow_nan=True), st.none(),
                    st.booleans(), st.text(max_size=2))


def _readout(kind: str, value, other):
    if kind == "next":
        return ps.NextToken(top_k=value, position=other)
    if kind == "generate":
        return ps.Generate(max_new_tokens=value, top_tokens=other if not isinstance(other, str) else 1)
    if kind == "generate-sampled":
        return ps.Generate(max_new_tokens=2, do_sample=True, temperature=value, top_p=other, top_k=value)
    return ps.AnswerProbs(answers=(other,) if other is not None else (), top_k=value)


@MODEL
@given(src_prompt=prompts, tgt_prompt=prompts, src_layer=layers, tgt_layer=layers, src_pos=positions,
       tgt_pos=positions, kind=st.sampled_from(["next", "generate", "generate-sampled", "answers"]),
       value=numbers, other=st.one_of(numbers, st.text(max_size=3)), noise=st.one_of(st.none(), numbers))
@example(src_prompt=PROMPT, tgt_prompt=PROMPT, src_layer=1, tgt_layer=1, src_pos=-1, tgt_pos=-1, kind="next",
         value=100000, other=-1, noise=None)
@example(src_prompt="\ud800", tgt_prompt=PROMPT, src_layer=1, tgt_layer=1, src_pos=-1, tgt_pos=-1, kind="next",
         value=3, other=-1, noise=None)
@example(src_prompt=PROMPT, tgt_prompt=PROMPT, src_layer=1, tgt_layer=1, src_pos=-1, tgt_pos=-1, kind="next",
         value=3, other=-1, noise=math.nan)
def test_any_patchscope_runs_or_raises_a_patchscopes_error(tiny_llama, src_prompt, tgt_prompt, src_layer,
                                                           tgt_layer, src_pos, tgt_pos, kind, value, other, noise):
    try:
        readout = _readout(kind, value, other)
        target = ps.Target(tgt_prompt, tgt_layer, tgt_pos,
                           noise=None if noise is None else ps.EmbeddingNoise(-1, scale=noise))
        scope = ps.Patchscope(ps.Source(src_prompt, src_layer, src_pos), target, readout)
        [result] = ps.run(scope, tiny_llama)
    except PatchscopesError as err:
        assert err.message
        return
    assert all(math.isfinite(p) for p in result.top_probs)


vectors = st.one_of(st.none(), st.text(max_size=2), st.floats(), st.lists(st.floats(), max_size=3),
                    st.sampled_from(["nan-vector", "ones-vector"]))


def _vector(value):
    import torch

    return {"nan-vector": torch.full((32,), math.nan), "ones-vector": torch.ones(32)}.get(value, value) \
        if isinstance(value, str) else value


@MODEL
@given(seed=numbers, knockout_layers=st.one_of(st.integers(-4, 4), st.tuples(layers), st.text(max_size=2)),
       keys=positions, value=vectors, add=st.one_of(st.booleans(), st.text(max_size=1), st.none()),
       write_layer=layers, write_pos=positions)
def test_any_intervention_runs_or_raises_a_patchscopes_error(tiny_llama, seed, knockout_layers, keys, value, add,
                                                             write_layer, write_pos):
    try:
        target = ps.Target(PROMPT, 1, -1, add=add if add is not None else False,
                           writes=(ps.Write(write_layer, write_pos, _vector(value)),),
                           noise=ps.EmbeddingNoise("you", seed=seed),
                           knockout=ps.AttentionKnockout(knockout_layers, keys))
        [result] = ps.run(ps.Patchscope(ps.Source(PROMPT, 1, -1), target), tiny_llama)
    except PatchscopesError as err:
        assert err.message
        return
    assert all(math.isfinite(p) for p in result.top_probs)


@MODEL
@given(layers=any_text, positions=st.one_of(any_text, st.lists(st.text(min_size=1, max_size=3), max_size=2)),
       top_k=numbers, target_layers=st.one_of(st.none(), any_text))
def test_any_sweep_options_plan_or_raise_a_patchscopes_error(tiny_llama, layers, positions, top_k, target_layers):
    try:
        scopes = ps.plan_sweep(tiny_llama, PROMPT, "token-identity", layers=layers, positions=positions,
                               top_k=top_k, target_layers=target_layers)
    except PatchscopesError:
        return
    assert scopes


# -- the command line's options ----------------------------------------------------------------------------------
@FAST
@given(value=any_text, prompt=st.one_of(st.just("The Eiffel Tower is in Paris"), st.text(min_size=1, max_size=8)))
@example(value="Eiffel", prompt="The Eiffel Tower is in Paris")
@example(value="Eiffel,Tower", prompt="The Eiffel Tower is in Paris")
@example(value="all 0", prompt=" ")  # found by hypothesis: a prompt of spaces has no word to give as an example
@example(value="a", prompt=" ")
def test_position_options_are_a_spec_words_or_an_error(value, prompt):
    try:
        spec = opt.position_spec(value, prompt)
    except PatchscopesError as err:
        assert err.hint
        return
    if isinstance(spec, list):  # words: each is in the prompt, and none is a number
        assert spec and all(word in prompt for word in spec)
    else:
        check_spec(spec, what="position")


@FAST
@given(value=st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True)),
       minimum=st.sampled_from([0.0, 1, 2]), strict=st.booleans())
def test_at_least_refuses_out_of_range_and_non_finite_numbers(value, minimum, strict):
    import typer

    check = opt.at_least(minimum, strict=strict)
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if ok:
        assert check(value) == value
    else:
        with pytest.raises(typer.BadParameter) as info:
            check(value)
        assert info.value.hint


def _cli(args):
    from typer.testing import CliRunner

    from patchscopes.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--layers", "--positions", "--target-layer", "--top-k", "--max-new-tokens",
                               "--batch-rows", "--threads"]),
       value=st.one_of(spec_like, st.text(max_size=6).filter(lambda t: not t.startswith("-") or t[1:2].isdigit())))
def test_inspect_options_end_in_exit_0_or_a_clean_exit_2(tiny_dir, option, value):
    result = _cli(["inspect", PROMPT, "--model", tiny_dir, "--layers", "0", "--positions", "-1", option, value])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 2:
        lines = result.output.strip().splitlines()
        assert [line for line in lines if line.startswith("error: ")] == lines[:1], result.output
        assert any(line.startswith("hint: ") for line in lines), result.output
