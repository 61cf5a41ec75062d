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


def test_writes_match_the_reference_engine(tiny):
    """States read with writes carried out give, through the final norm and unembedding, the logits the
    reference engine computes for the same writes (left-padded prompts of different lengths, every family)."""
    import patchscopes as ps

    d = tiny.hidden_size
    torch.manual_seed(0)
    prompts = [[1, 40, 41, 42, 43], [1, 50, 51]]
    write = ps.engine.Write
    writes = [[write(0, 2, torch.randn(d) * 3)],
              [write(ps.engine.EMBEDDINGS, 1, torch.randn(d)), write(1, 1, torch.randn(d), add=True)]]
    last = tiny.num_layers - 1
    states = capture_states(tiny, prompts, [[len(p) - 1] for p in prompts], [last], writes=writes)
    got = tiny.head(states[:, 0]).float()
    for row, (prompt, ws) in enumerate(zip(prompts, writes)):
        scope_writes = tuple(ps.Write("embeddings" if w.layer == ps.engine.EMBEDDINGS else w.layer, w.position,
                                      w.value, add=w.add) for w in ws)
        scope = ps.Patchscope(None, ps.Target(tuple(prompt), 0, writes=scope_writes), ps.NextToken(full_logits=True))
        expected = ps.run(scope, tiny, engine="reference")[0].readings.logits
        torch.testing.assert_close(got[row], expected, atol=1e-4, rtol=1e-4)
    plain = tiny.head(capture_states(tiny, prompts, [[len(p) - 1] for p in prompts], [last])[:, 0]).float()
    assert not torch.allclose(plain, got, atol=1e-3)  # the writes changed something


def test_writes_must_match_the_sequences(tiny_llama):
    with pytest.raises(PatchscopesError, match="2 sequences but 1 lists of writes"):
        capture_states(tiny_llama, PROMPTS, POSITIONS, [0], writes=[[]])
