"""Rows of many entry blocks in one forward, each running only the blocks from its entry on, over a shared prefix."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
from patchscopes import NextToken, Patchscope, Source, Target
from patchscopes.engine import layer_skipping
from patchscopes.engine.layer_skipping import Landing, Stair, staircase

PROMPTS = ["The Eiffel Tower is in Paris", "Hi", "A longer prompt about rivers"]
# The placeholder sits past the tiny models' sliding window of 16 tokens, with several tokens after it.
LONG_TARGET = "A preamble that runs well past the sliding window: x, and the rest"


def every_layer_scopes(model: ps.LanguageModel, target: str, position, readouts) -> list[Patchscope]:
    return [
        Patchscope(Source(prompt, layer, -1), Target(target, t_layer, position), readout)
        for prompt in PROMPTS
        for layer in (0, model.num_layers - 1)
        for t_layer in range(model.num_layers)
        for readout in readouts
    ]


@pytest.mark.parametrize("rows", [2, 5, 256])
def test_batches_straddling_patch_layers_match_reference(tiny, rows, assert_same):
    scopes = every_layer_scopes(tiny, LONG_TARGET, "x", [NextToken(top_k=4), NextToken(top_k=2, position=-2)])
    batched = ps.run(scopes, tiny, budget=ps.BatchBudget(rows=rows))
    assert_same(batched, ps.run(scopes, tiny, engine="reference"))


def test_patch_at_the_first_token_has_no_prefix(tiny, assert_same):
    scopes = every_layer_scopes(tiny, "x is a word", 0, [NextToken(top_k=3, position=-1)])
    assert_same(ps.run(scopes, tiny), ps.run(scopes, tiny, engine="reference"))


def test_fallback_without_a_shared_prefix_matches(tiny_llama, monkeypatch, assert_same):
    scopes = every_layer_scopes(tiny_llama, LONG_TARGET, "x", [NextToken(top_k=3)])
    calls = []

    def refuse(cache):
        calls.append(cache)
        return None

    monkeypatch.setattr("patchscopes.engine.batched.shared_view", refuse)
    assert_same(ps.run(scopes, tiny_llama), ps.run(scopes, tiny_llama, engine="reference"))
    assert calls  # the fallback (one cache copy per row, hooks) was taken


def test_rows_must_be_sorted_by_entry(tiny_llama):
    with pytest.raises(ValueError, match="sorted"), staircase(tiny_llama, [2, 1], {}):
        pass


def test_blocks_are_restored_even_when_the_forward_fails(tiny_llama, monkeypatch):
    originals = list(tiny_llama.arch.blocks)
    scopes = every_layer_scopes(tiny_llama, LONG_TARGET, "x", [NextToken()])

    def failing(self, *args, **kwargs):
        raise RuntimeError("failed inside a stand-in")

    monkeypatch.setattr(Stair, "forward", failing)
    with pytest.raises(RuntimeError, match="inside a stand-in"):
        ps.run(scopes, tiny_llama)
    assert list(tiny_llama.arch.blocks) == originals
    monkeypatch.undo()
    ps.run(scopes, tiny_llama)
    assert list(tiny_llama.arch.blocks) == originals


def test_no_row_runs_a_block_below_its_entry(tiny_llama, monkeypatch):
    """Count the rows each original block runs: a row patched at l* runs exactly the blocks above l*."""
    seen: dict[int, int] = {}
    blocks = tiny_llama.arch.blocks
    handles = [
        block.register_forward_hook(lambda mod, args, out, j=j: seen.__setitem__(j, seen.get(j, 0) + out.shape[0]))
        for j, block in enumerate(blocks)
    ]
    layers = [0, 0, 1, 2, 2, 2]
    ids = torch.tensor([tiny_llama.encode("abc")] * len(layers))
    entries = [layer + 1 for layer in layers]
    landings = {j: Landing(torch.zeros(ids.shape[1], tiny_llama.hidden_size), [], [], None, []) for j in set(layers)}
    try:
        with torch.no_grad(), staircase(tiny_llama, entries, landings):
            tiny_llama.forward(ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    expected = {j: sum(1 for layer in layers if layer < j) for j in range(tiny_llama.num_layers)}
    assert {j: seen.get(j, 0) for j in expected} == expected


def test_rows_of_batch_arguments_are_cut_and_others_kept():
    batch = torch.zeros(4, 3)
    shared = torch.zeros(1, 3)
    flat = torch.zeros(4)
    cut = layer_skipping._rows({"a": batch, "b": (batch, shared), "c": [flat], "d": None}, 2, 4)
    assert cut["a"].shape == (2, 3) and cut["b"][0].shape == (2, 3) and cut["b"][1].shape == (1, 3)
    assert cut["c"][0].shape == (4,) and cut["d"] is None
