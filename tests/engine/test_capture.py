"""capture_states: the one way code outside the engine reads hidden states."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from patchscopes.engine import capture_states
from patchscopes.errors import PatchscopesError

PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51]]
POSITIONS = [[2, 4], [1]]


@pytest.mark.parametrize("site", ["block", "mlp"])
def test_one_prompt_at_a_time_reads_the_same_site(tiny_llama, monkeypatch, site):
    """Where left padding is not exact, prompts are read one at a time, at the site asked for."""
    batched = capture_states(tiny_llama, PROMPTS, POSITIONS, [0, 2], site)
    monkeypatch.setattr(tiny_llama, "fast_path", dataclasses.replace(tiny_llama.fast_path, left_padding=False))
    alone = capture_states(tiny_llama, PROMPTS, POSITIONS, [0, 2], site)
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_sites_differ(tiny_llama):
    block = capture_states(tiny_llama, PROMPTS, POSITIONS, [1], "block")
    mlp = capture_states(tiny_llama, PROMPTS, POSITIONS, [1], "mlp")
    assert block.shape == mlp.shape == (3, 1, tiny_llama.hidden_size)
    assert not torch.allclose(block, mlp)


def test_a_position_outside_the_prompt_is_refused(tiny_llama):
    with pytest.raises(PatchscopesError, match="outside a sequence of 3 tokens"):
        capture_states(tiny_llama, [[1, 2, 3]], [[3]])
