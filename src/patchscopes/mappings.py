"""Mappings f that carry a source hidden state into the target's space (the paper's f: R^d -> R^d*).

Three kinds: :class:`Identity` (the default), :class:`Affine` (``f(h) = h W^T + b``, stored as
safetensors) and any Python callable, wrapped by :func:`as_mapping`. :func:`check_mapping` runs a mapping
on a zero vector before anything else runs, so a size mismatch fails at once with a clear message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.storage import check_finite


@runtime_checkable
class StateMap(Protocol):
    """Anything that maps a batch of hidden states ``(n, d)`` to ``(n, d*)``: the paper's f; ``name`` labels it
    in results. (0.2 called it ``Mapping``, the name of :class:`collections.abc.Mapping`; that name still
    imports, with a deprecation warning.)"""

    name: str

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(eq=False)
class Identity:
    """f(h) = h."""

    name: str = "identity"

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass(eq=False)
class Affine:
    """f(h) = h Wᵀ + b, with ``weight`` of shape ``(d_out, d_in)`` and ``bias`` of shape ``(d_out,)``.

    Attributes:
        weight: The linear part.
        bias: The offset; zeros if not given.
        name: A label for results.
        metadata: Free-form string metadata saved with the weights (models, layers, data fingerprint).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    name: str = "affine"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise PatchscopesError(f"an affine weight must be a matrix, got shape {tuple(self.weight.shape)}")
        if self.bias is None:
            self.bias = torch.zeros(self.weight.shape[0], dtype=self.weight.dtype)
        if self.bias.shape != (self.weight.shape[0],):
            raise PatchscopesError(
                f"affine bias of shape {tuple(self.bias.shape)} does not fit weight of shape "
                f"{tuple(self.weight.shape)}; it must have shape ({self.weight.shape[0]},)"
            )

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != self.in_features:
            raise PatchscopesError(
                f"mapping {self.name!r} expects vectors of size {self.in_features}, got {hidden.shape[-1]}"
            )
        weight = self.weight.to(hidden.device)
        bias = self.bias.to(hidden.device)
        out = hidden.to(weight.dtype) @ weight.T + bias
        return out

    def save(self, path: str | Path) -> None:
        """Write the map as a safetensors file (``weight``, ``bias``, string metadata), atomically."""
        from patchscopes.storage import write_safetensors

        meta = {"name": self.name, **{k: str(v) for k, v in self.metadata.items()}}
        write_safetensors(path, {"weight": self.weight.detach(), "bias": self.bias.detach()}, meta, "the map")

    @classmethod
    def load(cls, path: str | Path) -> Affine:
        """Read a map written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PatchscopesError(f"no such mapping file: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                weight = fh.get_tensor("weight")
                bias = fh.get_tensor("bias") if "bias" in fh.keys() else None  # noqa: SIM118
        except Exception as err:
            raise PatchscopesError(
                f"could not read mapping {path}: {err}",
                hint="a mapping file is a safetensors file with a 'weight' (d_out, d_in) and a 'bias' (d_out)",
            ) from err
        check_finite({"weight": weight} if bias is None else {"weight": weight, "bias": bias}, path, "the mapping")
        name = meta.pop("name", path.stem)
        return cls(weight, bias, name=name, metadata=meta)


@dataclass(eq=False)
class FunctionMapping:
    """Wraps any callable ``(n, d) -> (n, d*)`` so it carries a name."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str = "function"

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fn(hidden)


IDENTITY = Identity()


def as_mapping(mapping: object) -> StateMap:
    """Turn ``None`` (identity), a mapping, a path to a safetensors map or a callable into a mapping."""
    if mapping is None:
        return IDENTITY
    if isinstance(mapping, (str, Path)):
        return Affine.load(mapping)
    if isinstance(mapping, (Identity, Affine, FunctionMapping)):
        return mapping
    if callable(mapping):
        return FunctionMapping(mapping, name=getattr(mapping, "name", None) or getattr(
            mapping, "__name__", type(mapping).__name__))
    raise PatchscopesError(
        f"a mapping must be None, a callable, or a path to a safetensors map; got {type(mapping).__name__}"
    )


def check_mapping(mapping: StateMap, d_in: int, d_out: int, *, dtype: torch.dtype, device) -> None:
    """Run ``mapping`` on a zero batch of size ``(1, d_in)`` and check it returns ``(1, d_out)``.

    Raises:
        PatchscopesError: The mapping fails or returns the wrong shape.
    """
    probe = torch.zeros(1, d_in, dtype=dtype, device=device)
    try:
        with torch.no_grad():
            out = mapping(probe)
    except PatchscopesError as err:
        raise PatchscopesError(
            f"mapping {mapping.name!r} does not accept the source's hidden size {d_in}: {err.message}",
            hint="fit or choose a mapping from the source model's width to the target model's width",
        ) from err
    except Exception as err:
        raise PatchscopesError(
            f"mapping {mapping.name!r} failed on a vector of size {d_in}: {type(err).__name__}: {err}",
            hint="a mapping takes a batch of shape (n, d_source) and returns (n, d_target)",
        ) from err
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, d_out):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PatchscopesError(
            f"mapping {mapping.name!r} turns a (1, {d_in}) batch into {shape}, but the target model "
            f"needs (1, {d_out})",
            hint=f"use a mapping from size {d_in} to size {d_out}",
        )


def affine_metadata(**items: object) -> dict[str, str]:
    """Metadata values as strings (lists and dicts as JSON) for :class:`Affine`."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in items.items()}


def __getattr__(name: str):
    if name == "Mapping":  # 0.2's name of StateMap
        import warnings

        warnings.warn("patchscopes.mappings.Mapping is deprecated: use StateMap", DeprecationWarning, stacklevel=2)
        return StateMap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
