"""The Jacobian of a later state with respect to earlier ones, against central finite differences."""

from __future__ import annotations

import pytest
import torch

from patchscopes.engine.gradients import state_jacobians
from patchscopes.errors import PatchscopesError
from patchscopes.testing import tiny_model


def _double(family: str):
    model = tiny_model(family)
    model.hf.double()
    return model


def _z_with_shift(model, ids, layer, position, delta):
    """Block L-1's output at the last position, with ``delta`` added to block ``layer``'s output at
    ``position``: a plain full forward with two forward hooks."""
    blocks = model.arch.blocks
    store = {}

    def shift(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, position] += delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def read(module, args, output):
        store["z"] = (output[0] if isinstance(output, tuple) else output)[0, -1].detach().clone()

    handles = [blocks[layer].register_forward_hook(shift), blocks[-1].register_forward_hook(read)]
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return store["z"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_jacobian_matches_finite_differences(family):
    model = _double(family)
    ids = model.encode("the cat sat on")
    position = 5
    result = state_jacobians(model, ids, [0, 1], position)
    d = model.hidden_size
    assert result.jacobians.shape == (2, d, d)
    eps = 1e-2  # the models compute their norms in float32: smaller steps drown in rounding
    for k, layer in enumerate([0, 1]):
        columns = []
        for j in range(d):
            e = torch.zeros(d, dtype=torch.float64)
            e[j] = eps
            plus = _z_with_shift(model, ids, layer, position, e)
            minus = _z_with_shift(model, ids, layer, position, -e)
            columns.append((plus - minus) / (2 * eps))
        numeric = torch.stack(columns, dim=1).float()
        scale = numeric.abs().max()
        assert torch.allclose(result.jacobians[k], numeric, atol=2e-3 * scale, rtol=1e-3), family
    # z and the logits are the model's own.
    assert torch.allclose(result.z, _z_with_shift(model, ids, 0, position, torch.zeros(d, dtype=torch.float64))
                          .float(), atol=1e-6)


def test_jacobian_of_a_state_with_respect_to_itself_is_the_identity(tiny_llama):
    ids = tiny_llama.encode("hello there")
    result = state_jacobians(tiny_llama, ids, [2], -1, target_layer=2, target_position=-1)
    assert torch.allclose(result.jacobians[0], torch.eye(tiny_llama.hidden_size), atol=1e-6)


def test_jacobian_refuses_a_target_before_the_source(tiny_llama):
    ids = tiny_llama.encode("hello there")
    with pytest.raises(PatchscopesError, match="at or after"):
        state_jacobians(tiny_llama, ids, [2], 3, target_layer=1)
    with pytest.raises(PatchscopesError, match="out of range"):
        state_jacobians(tiny_llama, ids, [0], 99)
