"""What a job does to a run: the engine's intervention types, one small set for every kind of patch.

- :class:`Read`: capture h, the output of a site at one position of a source run (the *source* of a patch).
- :class:`Write`: a vector written over (or added to) the output of a *site* at one position: a decoder block
  (the residual stream after block l), its MLP or its attention module, or the token embeddings
  (``layer=EMBEDDINGS``, before block 0). A write without a value writes the job's f(h).
- :class:`Noise`: vectors added to (or written over) the token embeddings of chosen positions (causal tracing's
  corrupted run). The vectors are explicit, so a run is reproduced exactly by passing the same tensor.
- :class:`Knockout`: attention edges cut, in every head of a set of layers, from one query position to a set of
  key positions (the masked scores become ``-inf``).
- :class:`SoftInput`: vectors that stand for the token embeddings of positions ``offset ..`` (a soft prompt).

Noise, knockout and soft inputs shape the run every row of a group shares (its *base run*); writes are what
tells the rows apart. :mod:`~patchscopes.engine.hooks` carries all of them out, for both engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.models.architectures import get_module

EMBEDDINGS = -1
"""The layer index of the token embeddings (the input of block 0) in engine jobs."""

Site = Literal["block", "mlp", "attn"]
SITES: tuple[str, ...] = ("block", "mlp", "attn")
MASKABLE_ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True, eq=False)
class Read:
    """h: the output of ``(layer, site)`` at ``position`` of ``model`` run on ``tokens``."""

    model: LanguageModel
    tokens: tuple[int, ...]
    layer: int
    position: int
    site: Site = "block"


@dataclass(frozen=True, eq=False)
class Write:
    """One vector written into a run.

    Attributes:
        layer: The block index, or :data:`EMBEDDINGS` for the token embeddings.
        position: The token position written.
        value: The vector ``(d,)``; ``None`` means the job's f(h).
        site: ``"block"`` (the block's output, the residual stream), ``"mlp"`` or ``"attn"`` (that
            module's output inside the block). Embedding writes use ``"block"``.
        add: Add the vector to the state instead of replacing it.
    """

    layer: int
    position: int
    value: torch.Tensor | None = None
    site: Site = "block"
    add: bool = False

    @property
    def entry(self) -> int:
        """The first block a run must compute again after this write: the block after a block-output write,
        the block itself for a write inside it (0 for the embeddings)."""
        return self.layer + 1 if self.site == "block" else self.layer


@dataclass(frozen=True, eq=False)
class Noise:
    """Vectors added to the token embeddings at ``positions``, ``values`` of shape ``(len(positions), d)``;
    with ``replace``, written over them instead (ROME's ``replace=True``)."""

    positions: tuple[int, ...]
    values: torch.Tensor
    replace: bool = False

    def writes(self) -> list[Write]:
        """The noise as writes on the embeddings."""
        return [Write(EMBEDDINGS, p, self.values[k], add=not self.replace) for k, p in enumerate(self.positions)]


@dataclass(frozen=True)
class Knockout:
    """Attention edges from ``query`` to each of ``keys`` cut in every head of ``layers``."""

    layers: tuple[int, ...]
    query: int
    keys: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class SoftInput:
    """The ``(k, d)`` ``vectors`` stand for the token embeddings at positions ``offset .. offset + k - 1``."""

    offset: int
    vectors: torch.Tensor

    def key(self) -> tuple:
        """What tells soft inputs apart: the offset and the vectors' storage and shape (views of one tensor share
        it)."""
        return self.offset, self.vectors.data_ptr(), tuple(self.vectors.shape)

    def writes(self) -> list[Write]:
        """The vectors as writes over the embeddings."""
        return [Write(EMBEDDINGS, self.offset + k, self.vectors[k]) for k in range(self.vectors.shape[0])]


Intervention = Write | Noise | Knockout | SoftInput


def site_module(model: LanguageModel, layer: int, site: str) -> nn.Module:
    """The module whose output a write at ``(layer, site)`` replaces."""
    if layer == EMBEDDINGS:
        return model.arch.embed
    block = model.arch.blocks[layer]
    if site == "block":
        return block
    path = {"mlp": model.arch.spec.mlp, "attn": model.arch.spec.attention}.get(site)
    if path is None:
        raise PatchscopesError(f"unknown site {site!r}", hint=f"use one of {', '.join(SITES)}")
    try:
        return get_module(block, path)
    except AttributeError as err:
        raise PatchscopesError(
            f"{model.name}: no {site} module in block {layer} ({err})",
            hint="set the mlp / attention paths of the family's ArchitectureSpec",
        ) from err


def check_knockout_support(model: LanguageModel) -> None:
    """Raise a clear error where attention edges cannot be masked (an attention kernel without masks)."""
    impl = getattr(model.hf.config, "_attn_implementation", None) or "eager"
    if impl not in MASKABLE_ATTENTION:
        raise PatchscopesError(
            f"attention knockout needs a maskable attention implementation; {model.name} uses {impl!r}",
            hint="load the model with attn_implementation='eager' or 'sdpa'",
        )
