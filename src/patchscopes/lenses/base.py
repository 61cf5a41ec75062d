"""The lens base: one map per layer l from the hidden state at layer l to the last layer, saved and reloaded.

A lens read through the last layer is a patchscope (REFERENCE.md, Table 1): with T = S, i* = i,
l* = L-1 and f = the layer's map, the readout is ``head(f(h))``. :meth:`Lens.mapping` gives f as an
:class:`~patchscopes.mappings.Affine`, so a lens goes wherever a mapping goes::

    lens = Lens.load("lenses/smollm2-affine", model=model)
    Target(prompt, layer=-1, position=i, mapping=lens.mapping(l))

Two kinds:

- ``affine`` (:func:`fit_affine_lens`): the paper's baseline, a closed-form least-squares map with bias from
  h_l to h_{L-1}, with an optional ridge term, solved in float64.
- ``tuned`` (:func:`train_tuned_lens`): Belrose et al.'s tuned lens, translators h + A h + b trained so that
  the lens's next-token distribution matches the model's own final distribution (KL(final ‖ lens)).

A lens is saved as a folder with ``lens.safetensors`` (``layer.{l}.weight``, ``layer.{l}.bias`` and the hashes
of the fitting documents) and ``lens.json`` (kind, model identity and sizes, data fingerprint, settings).
:meth:`Lens.load` refuses a lens made for another model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.mappings import Affine
from patchscopes.models import LanguageModel
from patchscopes.models.identity import check_model_identity, compare_identity, model_identity  # noqa: F401 (re-exported)
from patchscopes.storage import read_folder, write_folder

LENS_KINDS = ("affine", "tuned")
CONFIG_FILE = "lens.json"
WEIGHTS_FILE = "lens.safetensors"
FORMAT = "patchscopes-lens"


# -- the lens --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Lens:
    """One map per layer l to the last layer of a model: a logit lens with a learned f.

    Attributes:
        kind: ``"affine"`` or ``"tuned"``.
        maps: ``{layer: Affine}``, each from the width of layer l to the width of the last layer.
        config: What was saved with it: ``model`` (identity and sizes), ``data`` (fingerprint, counts),
            ``ridge`` and training settings.
        fit_documents: The SHA-256 digests (first 15 hex digits, as integers) of the documents it was
            fitted on, so an evaluation can leave them out.
    """

    kind: str
    maps: dict[int, Affine]
    config: dict = field(default_factory=dict)
    fit_documents: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if self.kind not in LENS_KINDS:
            raise PatchscopesError(f"unknown lens kind {self.kind!r}", hint=f"use one of {', '.join(LENS_KINDS)}")
        for layer, affine in self.maps.items():
            affine.name = f"{self.kind}-lens[{layer}]"

    def __repr__(self) -> str:
        model = self.config.get("model", {})
        return f"Lens({self.kind!r}, model={model.get('name')!r}, layers={len(self.maps)})"

    @property
    def name(self) -> str:
        """``affine-lens`` or ``tuned-lens``: the method's name in results."""
        return f"{self.kind}-lens"

    @property
    def layers(self) -> list[int]:
        """The layers that have a map."""
        return sorted(self.maps)

    @property
    def target_layer(self) -> int:
        """l* = L-1, the layer every map leads to."""
        return int(self.config.get("target_layer", self.config.get("model", {}).get("num_layers", 0) - 1))

    def mapping(self, layer: int) -> Affine:
        """f for source layer ``layer`` (negative counts from the end): patch it at l* = L-1.

        Raises:
            PatchscopesError: The lens has no map for that layer.
        """
        n = self.config.get("model", {}).get("num_layers")
        resolved = layer % n if isinstance(n, int) and n > 0 and -n <= layer < 0 else layer
        if resolved not in self.maps:
            raise PatchscopesError(
                f"the {self.name} has no map for layer {layer}",
                hint=f"it has layers {self.layers[0]}..{self.layers[-1]}" if self.maps else "it has no maps",
            )
        return self.maps[resolved]

    def check_model(self, model: LanguageModel) -> None:
        """Raise a :class:`PatchscopesError` unless the lens was fitted on ``model``."""
        check_model_identity(self.config.get("model", {}), model, f"the {self.name}")

    def save(self, directory: str | Path) -> Path:
        """Write ``lens.safetensors`` and ``lens.json`` into ``directory`` (created if needed)."""
        tensors = {"fit_documents": self.fit_documents.to(torch.long)}
        for layer, affine in self.maps.items():
            tensors[f"layer.{layer}.weight"] = affine.weight.detach()
            tensors[f"layer.{layer}.bias"] = affine.bias.detach()
        config = {"format": FORMAT, "version": 1, "kind": self.kind, "layers": self.layers, **self.config}
        return write_folder(directory, CONFIG_FILE, WEIGHTS_FILE, config, tensors,
                            {"format": FORMAT, "kind": self.kind}, "the lens")

    @classmethod
    def load(cls, directory: str | Path, model: LanguageModel | None = None) -> Lens:
        """Read a lens written by :meth:`save`; with ``model``, check it was fitted on that model.

        Raises:
            PatchscopesError: The folder is not a lens, or the lens belongs to another model.
        """
        config, tensors = read_folder(directory, CONFIG_FILE, WEIGHTS_FILE, "a lens",
                                      hint="make one with `patchscopes fit-lens --model M --text FILE --out DIR`")
        if config.get("format") != FORMAT:
            raise PatchscopesError(f"{Path(directory) / CONFIG_FILE} is not a patchscopes lens config")
        kind = config.pop("kind", None)
        for key in ("format", "version", "layers"):
            config.pop(key, None)
        maps = {}
        for key, value in tensors.items():
            if key.startswith("layer.") and key.endswith(".weight"):
                layer = int(key.split(".")[1])
                maps[layer] = Affine(value, tensors.get(f"layer.{layer}.bias"))
        lens = cls(kind, maps, config, tensors.get("fit_documents", torch.zeros(0, dtype=torch.long)))
        if model is not None:
            lens.check_model(model)
        return lens

    def overlaps(self, digests: Sequence[str]) -> list[bool]:
        """For each document digest, whether the lens was fitted on that document."""
        return fitted_on(self.fit_documents, digests)


def digest_key(digest: str) -> int:
    """A document's SHA-256 hex digest as a 60-bit integer (its first 15 hex digits)."""
    return int(digest[:15], 16)


def fitted_on(fit_documents: torch.Tensor, digests: Sequence[str]) -> list[bool]:
    """For each document digest, whether it is among ``fit_documents`` (the :func:`digest_key` of each document a
    lens or map was fitted on)."""
    fitted = set(fit_documents.tolist())
    return [digest_key(d) in fitted for d in digests]


def identity_map(d: int) -> Affine:
    """The identity as an :class:`Affine` (the map of the last layer to itself)."""
    return Affine(torch.eye(d), torch.zeros(d))



def lens_summary(lens: Lens) -> str:
    """One line about a lens: kind, model, data and fit size."""
    data = lens.config.get("data", {})
    extra = f", ridge {lens.config.get('ridge')}" if lens.kind == "affine" else ""
    if lens.kind == "tuned":
        loss = lens.config.get("training", {}).get("final_loss")
        extra = f", final KL {loss:.3f} nats" if isinstance(loss, float) and not math.isnan(loss) else ""
    return (f"{lens.name} of {lens.config.get('model', {}).get('name')}: {len(lens.maps)} layers, "
            f"{data.get('samples')} vectors from {data.get('documents')} documents{extra}")
