"""A model name that is not an alias, a file or a folder: a typo of an alias is named as such, and with the
hub offline an unknown name says so instead of showing a failed connection."""

from __future__ import annotations

import pytest

from patchscopes import PatchscopesError, load_model
from patchscopes.models.loading import alias_guesses


@pytest.mark.parametrize(("name", "guess"), [
    ("smollm2", "smollm2-135m"), ("smollm", "smollm2-135m"), ("SmolLM2-135M", "smollm2-135m"),
    ("smollm2-135", "smollm2-135m"), ("gemma3", "gemma3-270m"), ("gemma-3-270m", "gemma3-270m"),
])
def test_typos_of_an_alias_name_it(name, guess):
    assert alias_guesses(name)[0] == guess
    with pytest.raises(PatchscopesError, match=f"unknown model '{name}' — did you mean '{guess}'") as info:
        load_model(name)
    assert "smollm2-135m, gemma3-270m" in info.value.hint


@pytest.mark.parametrize("name", ["gpt2", "meta-llama/Llama-3.2-1B", "qwen"])
def test_other_names_are_not_guessed(name):
    assert alias_guesses(name) == []


def test_an_unknown_name_offline_says_the_hub_is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PatchscopesError, match=r"unknown model 'org/no-such-model-xyz': .*the hub is offline") as info:
        load_model("org/no-such-model-xyz")
    assert "aliases are" in info.value.hint
    assert "connect" not in str(info.value).lower()
