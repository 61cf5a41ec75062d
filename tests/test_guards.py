"""What a new user meets first, through the API: ranges past the model are refused, prompts longer than the
model's context are refused, descriptions come without the prompt's separator, ``dir(patchscopes)`` is the API."""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes import PatchscopesError

PROMPT = "Hi you"  # 7 byte positions with <bos>


@pytest.mark.parametrize(("options", "message"), [
    ({"layers": "0:40"}, "layer range '0:40' goes past the last layer: there are 3 layers"),
    ({"layers": "1:"}, None),
    ({"positions": "2:99"}, "position range '2:99' goes past the last position: there are 7 positions"),
    ({"positions": "-3:"}, None),
    ({"target_layers": "0:4"}, "target layer range '0:4' goes past"),
])
def test_sweep_ranges_past_the_model_are_refused(tiny_llama, options, message):
    if message is None:
        assert len(ps.plan_sweep(tiny_llama, PROMPT, **options))
        return
    with pytest.raises(PatchscopesError, match=message) as info:
        ps.sweep(tiny_llama, PROMPT, **options)
    assert info.value.hint  # the same hint as for a single index


def test_context_length_comes_from_the_config(tiny_llama, tiny_gpt2):
    assert tiny_llama.context_length == 512
    assert tiny_gpt2.context_length == 512  # GPT-2 calls it n_positions


@pytest.mark.parametrize("where", ["source", "target"])
def test_a_prompt_longer_than_the_context_is_refused(tiny_llama, where):
    long_prompt = "word " * 120  # 601 positions
    source = ps.Source(long_prompt if where == "source" else PROMPT, layer=0, position=-1)
    target = ps.Target(long_prompt if where == "target" else PROMPT, layer=0, position=-1)
    with pytest.raises(PatchscopesError, match=f"the {where} prompt takes 601 positions, more than the 512 "
                                               f"{tiny_llama.name} can read"):
        ps.run(ps.Patchscope(source, target), tiny_llama)


def test_sweep_refuses_a_long_prompt_before_planning(tiny_llama):
    with pytest.raises(PatchscopesError, match="source prompt takes 601 positions"):
        ps.plan_sweep(tiny_llama, "word " * 120)


def test_generation_past_the_context_is_refused(tiny_llama):
    prompt = "w" * 500  # 501 positions, and 20 to generate
    scope = ps.Patchscope(ps.Source(PROMPT, 0, -1), ps.Target(prompt, 0, -1), ps.Generate(max_new_tokens=20))
    with pytest.raises(PatchscopesError, match="target prompt with 20 generated tokens takes 521 positions"):
        ps.run(scope, tiny_llama)
    ps.run(ps.Patchscope(ps.Source(PROMPT, 0, -1), ps.Target(prompt, 0, -1), ps.Generate(max_new_tokens=11)),
           tiny_llama)  # 512 positions: just fits


def test_a_model_without_a_known_context_runs_any_prompt(tiny_llama, monkeypatch):
    monkeypatch.setattr(type(tiny_llama), "context_length", property(lambda self: None))
    tiny_llama.check_length(10**6)


@pytest.mark.parametrize(("raw", "clean"), [
    (": chemist", "chemist"),
    (" : Polish-French physicist", "Polish-French physicist"),
    ("chemist", "chemist"),
    (":", ""),
    ("  ", ""),
])
def test_description_separator_is_stripped(raw, clean):
    assert ps.ENTITY_DESCRIPTION.clean(raw) == clean
    assert ps.TOKEN_IDENTITY.clean(raw) == raw  # no separator: unchanged


def test_sweep_keeps_the_raw_text_beside_the_description(tiny_llama):
    frame = ps.sweep(tiny_llama, PROMPT, "description", layers="0", positions="-1", max_new_tokens=4,
                     baseline=True)
    assert list(frame.columns).index("description") == list(frame.columns).index("generated_text") + 1
    for rec in frame.to_dict(orient="records"):
        assert rec["description"] == ps.ENTITY_DESCRIPTION.clean(rec["generated_text"])
        assert rec["baseline_description"] == ps.ENTITY_DESCRIPTION.clean(rec["baseline_generated_text"])
    assert "description" not in ps.sweep(tiny_llama, PROMPT, layers="0", positions="-1").columns


def test_dir_lists_the_api_not_the_submodules():
    import patchscopes.cli  # noqa: F401  (importing a submodule sets it as an attribute of the package)

    names = dir(ps)
    assert set(names) == {*ps.__all__, "__version__"}
    for module in ("cli", "engine", "models", "specs", "resolve", "runner", "scope", "experiments"):
        assert module not in names
    assert names == sorted(names)
