"""Steering vectors from contrast pairs, vector files, and the checks every described vector passes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from patchscopes.engine import capture_states
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.vectors.sae import SAE, load_sae


def contrast_vector(
    model: LanguageModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    *,
    tokens: str = "mean",
) -> torch.Tensor:
    """The mean difference of the states of two prompt sets at ``layer``: a steering vector from contrast pairs.

    Args:
        model: The model.
        positive: Prompts showing the concept (e.g. French sentences).
        negative: Prompts without it (e.g. the same sentences in English).
        layer: The layer whose block outputs are read.
        tokens: ``"mean"``: each prompt's states averaged over its tokens (special tokens such as BOS left out);
            ``"last"``: each prompt's last token.

    Returns:
        ``mean(positive) - mean(negative)``, ``(d,)`` in float32.

    Raises:
        PatchscopesError: A set is empty, a prompt has no tokens, the layer is out of range, or ``tokens`` is
            neither ``"mean"`` nor ``"last"``.
    """
    if tokens not in ("mean", "last"):
        raise PatchscopesError(f"tokens must be 'mean' or 'last', got {tokens!r}", hint="use tokens='mean' or 'last'")
    layer = model.check_layer(layer, "layer")
    means = []
    for name, prompts in (("positive", positive), ("negative", negative)):
        if isinstance(prompts, str) or not prompts:
            raise PatchscopesError(f"the {name} prompts must be a non-empty list of strings",
                                   hint="e.g. positive=['Le chat dort.'], negative=['The cat sleeps.']")
        ids = [model.encode(p) for p in prompts]
        special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
        positions = []
        for prompt, seq in zip(prompts, ids):
            if not seq:
                raise PatchscopesError(f"the {name} prompt {prompt!r} has no tokens", hint="leave out empty prompts")
            own = [k for k, t in enumerate(seq) if t not in special] or list(range(len(seq)))
            positions.append(own if tokens == "mean" else [len(seq) - 1])
        states = capture_states(model, ids, positions, [layer])[:, 0]
        counts = [len(p) for p in positions]
        per_prompt = torch.stack([chunk.mean(0) for chunk in torch.split(states, counts)])
        means.append(per_prompt.mean(0))
    return means[0] - means[1]


def load_vectors(path: str | Path, *, key: str | None = None) -> torch.Tensor | SAE:
    """Vectors from a file: an SAE folder (SAELens's layout), a safetensors file, a ``.pt`` tensor or a ``.npy``
    array.

    Args:
        path: The folder or file.
        key: The tensor to take from a safetensors file or a ``.pt`` dict (default: ``W_dec`` if present, else
            the only tensor).

    Returns:
        An :class:`SAE` for a folder, else a float32 tensor ``(n, d)`` (a single vector becomes one row).

    Raises:
        PatchscopesError: No such file, an unknown format, or no single tensor to take.
    """
    path = Path(path)
    if path.is_dir():
        return load_sae(path)
    if not path.is_file():
        raise PatchscopesError(f"no vector file at {path}",
                               hint="give a .safetensors, .pt or .npy file, or an SAELens SAE folder")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            found = load_file(str(path))
        elif suffix in (".pt", ".pth"):
            found = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            import numpy as np

            found = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise PatchscopesError(f"unknown vector file format {suffix or path.name!r}",
                                   hint="give a .safetensors, .pt or .npy file, or an SAELens SAE folder")
    except PatchscopesError:
        raise
    except Exception as err:  # a corrupt file: the readers raise many types
        raise PatchscopesError(f"cannot read vectors from {path} ({type(err).__name__}: {err})",
                               hint="the file may be damaged, or not of the format its name says") from err
    if isinstance(found, dict):
        names = sorted(k for k, v in found.items() if isinstance(v, torch.Tensor))
        name = key or ("W_dec" if "W_dec" in names else names[0] if len(names) == 1 else None)
        if name not in names:
            raise PatchscopesError(f"{path} holds the tensors {', '.join(names) or '(none)'}; which one?",
                                   hint="pass key=NAME (--key NAME)")
        found = found[name]
    if not isinstance(found, torch.Tensor):
        raise PatchscopesError(f"{path} holds a {type(found).__name__}, not a tensor",
                               hint="save a tensor (n, d), or a dict of tensors")
    return found.float().reshape(1, -1) if found.ndim == 1 else found.float()


def check_vectors(vectors: torch.Tensor, width: int, what: str = "vector") -> torch.Tensor:
    """``vectors`` as a float32 ``(n, width)`` matrix, refused if it cannot be written into a model of ``width``.

    Raises:
        PatchscopesError: A shape other than ``(width,)`` or ``(n, width)``, no rows, a NaN or infinite entry, or a
            zero vector (it has no direction).
    """
    vectors = torch.as_tensor(vectors).detach()
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != width:
        raise PatchscopesError(f"the {what}s have shape {tuple(vectors.shape)}, but the model's states have width "
                               f"{width}", hint=f"give vectors of shape (n, {width}) (or ({width},) for one)")
    if vectors.shape[0] == 0:
        raise PatchscopesError(f"no {what}s to describe", hint=f"give at least one vector of width {width}")
    vectors = vectors.float().cpu()
    bad = (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise PatchscopesError(f"{what} {bad[0]} has NaN or infinite entries"
                               + (f" ({len(bad)} such {what}s)" if len(bad) > 1 else ""),
                               hint="check how the vectors were computed; every entry must be finite")
    zero = (vectors.norm(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise PatchscopesError(f"{what} {zero[0]} is zero: it has no direction to describe",
                               hint="leave it out, or give a vector with at least one non-zero entry")
    return vectors
