"""Target prompts: deriving one from templates, verbalizing a subject, checking the placeholder."""

from __future__ import annotations

import pytest

from patchscopes.data.target_prompts import check_target_prompt, derive_target_prompt, verbalize
from patchscopes.errors import PatchscopesError


def test_target_prompt_helpers():
    assert derive_target_prompt(["{} and {} are", "The capital of {}"]) == "The capital of x"
    assert derive_target_prompt(["x marks {}", "{} is at"]) == "x is at"  # the word x would be ambiguous
    with pytest.raises(PatchscopesError, match="cannot derive"):
        derive_target_prompt(["no subject here"])
    assert verbalize("Among x, y and x", "Z") == "Among x, y and Z"
    assert check_target_prompt("The color of x") == "The color of x"
    with pytest.raises(PatchscopesError, match="no placeholder"):
        check_target_prompt("The color of xylophones")
    with pytest.raises(PatchscopesError, match="2 whole-word placeholder"):
        check_target_prompt("x or x")
