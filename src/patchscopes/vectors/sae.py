"""Sparse autoencoders in SAELens's saved layout, read from a local folder (no hub).

SAELens's ``SAE.save_model(path)`` writes two files into ``path``:

- ``sae_weights.safetensors``: the state dict, ``W_enc`` ``(d_in, d_sae)``, ``W_dec`` ``(d_sae, d_in)``,
  ``b_enc`` ``(d_sae,)``, ``b_dec`` ``(d_in,)`` (a JumpReLU SAE adds ``threshold`` ``(d_sae,)``);
- ``cfg.json``: ``d_in``, ``d_sae``, ``architecture``, ``dtype``, ``apply_b_dec_to_input``, ... and where the
  SAE reads the model, ``hook_name`` (TransformerLens's name, e.g. ``blocks.6.hook_resid_post``), in ``meta``
  in SAELens 6, at the top level before.

Feature ``k``'s direction is decoder row ``W_dec[k]``. A ``hook_resid_post`` of block ``L`` is this library's
layer ``L``; a ``hook_resid_pre`` of block ``L`` is layer ``L - 1`` (the embeddings for block 0).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.storage import read_safetensors

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")


@dataclass(frozen=True, eq=False)
class SAE:
    """A sparse autoencoder's weights and configuration.

    Attributes:
        W_enc: ``(d_in, d_sae)``.
        W_dec: ``(d_sae, d_in)``: one feature direction per row.
        b_enc: ``(d_sae,)``.
        b_dec: ``(d_in,)``.
        cfg: The folder's ``cfg.json``.
        threshold: A JumpReLU SAE's thresholds ``(d_sae,)``, else ``None``.
        path: Where it was read from.
    """

    W_enc: torch.Tensor
    W_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    cfg: dict = field(default_factory=dict)
    threshold: torch.Tensor | None = None
    path: str = ""

    @property
    def d_in(self) -> int:
        """The width of the states the SAE reads."""
        return int(self.W_dec.shape[1])

    @property
    def d_sae(self) -> int:
        """The number of features."""
        return int(self.W_dec.shape[0])

    @property
    def hook_name(self) -> str | None:
        """TransformerLens's name of the site the SAE reads (``cfg.json``'s ``meta.hook_name`` or
        ``hook_name``), if the config says."""
        meta = self.cfg.get("meta") if isinstance(self.cfg.get("meta"), dict) else {}
        name = meta.get("hook_name") or self.cfg.get("hook_name")
        return name if isinstance(name, str) else None

    @property
    def layer(self) -> int | str | None:
        """The layer of this library the SAE reads (``"embeddings"`` for block 0's residual input), from its
        hook name; ``None`` where the hook is not a residual stream or the config does not say."""
        found = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", self.hook_name or "")
        if not found:
            return None
        block = int(found.group(1))
        if found.group(2) == "post":
            return block
        return block - 1 if block > 0 else "embeddings"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of states ``x`` ``(..., d_in)``: ReLU (or JumpReLU where thresholds are given)
        of ``(x - b_dec) W_enc + b_enc`` (``b_dec`` subtracted when the config's ``apply_b_dec_to_input`` is true,
        SAELens's default)."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.get("apply_b_dec_to_input", True):
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.threshold is not None:
            return pre * (pre > self.threshold)
        return torch.relu(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """States reconstructed from feature activations ``(..., d_sae)``: ``acts W_dec + b_dec``."""
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec


def load_sae(path: str | Path) -> SAE:
    """Read an SAE saved in SAELens's layout from the folder ``path``.

    Args:
        path: A folder holding ``cfg.json`` and ``sae_weights.safetensors``.

    Returns:
        The :class:`SAE`, its tensors in float32 on the CPU.

    Raises:
        PatchscopesError: The folder or a file is missing, a tensor is missing, the shapes disagree with each
            other or with the config, or a weight is not finite (:func:`~patchscopes.storage.read_safetensors`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PatchscopesError(f"no SAE folder at {folder}",
                               hint=f"give a folder holding {CONFIG_FILE} and {WEIGHTS_FILE} (SAELens's save_model)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise PatchscopesError(f"the SAE folder {folder} has no {name}",
                                   hint=f"an SAELens folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PatchscopesError(f"{folder / CONFIG_FILE} is not valid JSON ({err})",
                               hint="SAELens writes cfg.json as a JSON object") from err
    if not isinstance(cfg, dict):
        raise PatchscopesError(f"{folder / CONFIG_FILE} must hold a JSON object",
                               hint="SAELens writes its config as one")
    _, tensors = read_safetensors(folder / WEIGHTS_FILE, "the SAE",  # NaN or infinite weights refused, by name
                                  hint="the file must be a safetensors file written by SAELens")
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise PatchscopesError(f"{folder / WEIGHTS_FILE} has no tensor {', '.join(missing)}",
                               hint=f"an SAELens SAE holds {', '.join(TENSORS)}; found {', '.join(sorted(tensors))}")
    w_enc, w_dec, b_enc, b_dec = (tensors[name].float() for name in TENSORS)
    if w_dec.ndim != 2:
        raise PatchscopesError(f"W_dec must be a matrix (d_sae, d_in), got shape {tuple(w_dec.shape)}",
                               hint="SAELens saves W_dec with one feature per row")
    d_sae, d_in = w_dec.shape
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, tensor in (("W_enc", w_enc), ("b_enc", b_enc), ("b_dec", b_dec)):
        if tuple(tensor.shape) != expected[name]:
            raise PatchscopesError(f"{name} has shape {tuple(tensor.shape)}, but W_dec {tuple(w_dec.shape)} needs "
                                   f"{expected[name]}", hint="the folder's tensors must come from one SAE")
    for key, size in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and cfg[key] != size:
            raise PatchscopesError(f"{CONFIG_FILE} says {key} = {cfg[key]}, but the weights have {size}",
                                   hint=f"the folder's {CONFIG_FILE} and {WEIGHTS_FILE} must come from one SAE")
    threshold = tensors.get("threshold")
    if threshold is not None:
        threshold = threshold.float()
    return SAE(w_enc, w_dec, b_enc, b_dec, cfg=cfg, threshold=threshold, path=str(folder))
