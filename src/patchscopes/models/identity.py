"""Model identity: what saved artefacts (lenses, maps, soft prompts, LREs) record about the model they were made
with, and the check that refuses them on another model."""

from __future__ import annotations

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel

_PROBE_SIZE = 32


def model_shape(model: LanguageModel) -> dict:
    """A model's name, family and sizes (layers, width, vocabulary)."""
    return {"name": model.name, "family": model.arch.spec.name, "num_layers": model.num_layers,
            "hidden_size": model.hidden_size, "vocab_size": model.vocab_size}


def spaced_sample(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` evenly spaced elements of a flat tensor, the first and the last included (all if it has fewer)."""
    n = flat.numel()
    k = min(n, k)
    return flat[(torch.arange(k, dtype=torch.long) * max(0, n - 1) // max(1, k - 1)).to(flat.device)]


def model_identity(model: LanguageModel) -> dict:
    """What a lens records about its model: name, family, sizes and a small sample of the output weights.

    The sample (``probe``) tells two models of the same shape apart, and survives a change of dtype.
    """
    probe = spaced_sample(model.arch.unembed.weight.detach().reshape(-1), _PROBE_SIZE).float().cpu().tolist()
    return {**model_shape(model), "probe": [round(v, 6) for v in probe]}


def check_model_identity(recorded: dict, model: LanguageModel, what: str = "this lens") -> None:
    """Raise unless ``model`` is the model ``recorded`` describes (same sizes and output weights).

    Raises:
        PatchscopesError: The sizes differ, or the weights do (another model of the same shape).
    """
    compare_identity(recorded, model_identity(model), what)


def compare_identity(recorded: dict, current: dict, what: str = "this lens") -> None:
    """Raise unless two :func:`model_identity` records describe the same model.

    Raises:
        PatchscopesError: The sizes differ, or the weights do (another model of the same shape).
    """
    made_for, name = recorded.get("name", "?"), current.get("name", "?")
    hint = f"fit a lens on {name} with `patchscopes fit-lens --model {name} ...`"
    for key, label in (("num_layers", "layers"), ("hidden_size", "hidden size"), ("vocab_size", "vocabulary")):
        if recorded.get(key) != current.get(key):
            raise PatchscopesError(
                f"{what} was fitted on another model ({made_for}, {label} {recorded.get(key)}), "
                f"not on {name} ({label} {current.get(key)})",
                hint=hint,
            )
    probe = torch.tensor(recorded.get("probe") or [], dtype=torch.float64)
    now = torch.tensor(current.get("probe") or [], dtype=torch.float64)
    if probe.shape != now.shape or not torch.allclose(probe, now, rtol=1e-2, atol=1e-2):
        raise PatchscopesError(
            f"{what} was fitted on another model ({made_for}), not on {name}: the sizes match but the "
            "weights differ",
            hint=hint,
        )
