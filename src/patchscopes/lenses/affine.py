"""The affine lens (the paper's "tuned lens" baseline; also early exit / linear shortcuts): a closed-form
least-squares map with bias from h_l to h_{L-1}, with an optional ridge term, solved in float64."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from patchscopes.data.text import Document
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.base import (
    Lens,
    identity_map,
    model_identity,
)
from patchscopes.lenses.fit_data import iter_hidden, plan_fit_data
from patchscopes.mappings import Affine
from patchscopes.models import LanguageModel
from patchscopes.runs import RunDir, RunOptions, open_run_dir, run_options, settings_of

CHECKPOINT_SECONDS = 60.0
"""Seconds between two saves of an affine fit's running sums in its run directory (the sums of a 7B model take
gigabytes: saving after every batch would cost more than the batches)."""


# -- affine lens -----------------------------------------------------------------------------------------
class AffineAccumulator:
    """Running sums for a least-squares affine map Y ≈ X Wᵀ + b, in float64."""

    def __init__(self, d_in: int, d_out: int) -> None:
        self.n = 0
        self.sx = torch.zeros(d_in, dtype=torch.float64)
        self.sy = torch.zeros(d_out, dtype=torch.float64)
        self.sxx = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.sxy = torch.zeros(d_in, d_out, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add samples ``x`` ``(n, d_in)`` and ``y`` ``(n, d_out)``."""
        x, y = x.to(torch.float64), y.to(torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y

    def state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The running sums as tensors (names prefixed by ``prefix``), to save and :meth:`restore`."""
        return {f"{prefix}n": torch.tensor([self.n], dtype=torch.long), f"{prefix}sx": self.sx,
                f"{prefix}sy": self.sy, f"{prefix}sxx": self.sxx, f"{prefix}sxy": self.sxy}

    def restore(self, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
        """Take back the sums :meth:`state` gave."""
        self.n = int(tensors[f"{prefix}n"][0])
        self.sx, self.sy = tensors[f"{prefix}sx"], tensors[f"{prefix}sy"]
        self.sxx, self.sxy = tensors[f"{prefix}sxx"], tensors[f"{prefix}sxy"]

    def solve(self, ridge: float = 0.0) -> Affine:
        """The map minimizing mean ‖x Wᵀ + b − y‖² + ridge · ‖W‖² (the bias is not penalized)."""
        if self.n == 0:
            raise PatchscopesError("no samples to fit an affine map on")
        if ridge < 0:
            raise PatchscopesError(f"the ridge term must be non-negative, got {ridge}")
        mx, my = self.sx / self.n, self.sy / self.n
        cxx = self.sxx / self.n - torch.outer(mx, mx)
        cxy = self.sxy / self.n - torch.outer(mx, my)
        if ridge > 0:
            cxx = cxx + ridge * torch.eye(cxx.shape[0], dtype=cxx.dtype)
            solution = torch.linalg.solve(cxx, cxy)
        else:
            solution = torch.linalg.lstsq(cxx, cxy, driver="gelsd").solution
        weight = solution.T.contiguous()
        bias = my - weight @ mx
        return Affine(weight.float(), bias.float())


def fit_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> Affine:
    """Closed-form least squares with bias: the :class:`Affine` f with f(x) ≈ y.

    Args:
        x: Inputs ``(n, d_in)``.
        y: Targets ``(n, d_out)``.
        ridge: λ in mean ‖f(x) − y‖² + λ‖W‖² (0: plain least squares, minimum-norm if underdetermined).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise PatchscopesError(f"fit_affine needs x (n, d_in) and y (n, d_out), got {tuple(x.shape)}, {tuple(y.shape)}")
    acc = AffineAccumulator(x.shape[1], y.shape[1])
    acc.add(x, y)
    return acc.solve(ridge)


def _save_sums(store: RunDir, accs: Sequence[AffineAccumulator], batches: int) -> None:
    sums = {k: v for layer, acc in enumerate(accs) for k, v in acc.state(f"{layer}.").items()}
    store.save_state("affine-lens", sums, {"batches": batches})


def fit_affine_lens(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    ridge: float = 0.0,
    samples: int = 20000,
    max_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    extra_config: dict | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
) -> Lens:
    """Fit the paper's affine lens: per layer l, least squares with bias from h_l to h_{L-1}.

    Args:
        model: The model.
        documents: The fitting documents (never the evaluation documents).
        ridge: λ of an optional ridge term on the weights (see :meth:`AffineAccumulator.solve`).
        samples: How many hidden-state vectors to fit on (all text positions of shuffled windows).
        max_tokens: Window length in tokens.
        seed: Seed of the window order.
        batch_size: Windows per forward pass.
        extra_config: More entries for the saved config (e.g. the files and the split).
        options: The fit's ``progress`` bars and ``run_dir`` (:class:`~patchscopes.runs.RunOptions`: the running
            sums are saved there every :data:`CHECKPOINT_SECONDS` seconds, and a fit given it again goes on from
            them); 0.2's ``progress=``/``run_dir=`` still work, with a warning.

    Returns:
        The lens; the last layer's map is the identity.
    """
    options = run_options(options, legacy, "fit_affine_lens")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="fit_affine_lens", models=[model], data=documents,
                         settings=settings_of(locals(), exclude=("model", "documents", "extra_config", "engine",
                                                                 "budget")))
    data = plan_fit_data(model, documents, samples=samples, max_tokens=max_tokens, seed=seed)
    last = model.num_layers - 1
    d = model.hidden_size
    accs = [AffineAccumulator(d, d) for _ in range(last)]
    start = time.perf_counter()
    saved = store.load_state("affine-lens") if store is not None else None
    resumed = saved[1]["batches"] if saved is not None else 0
    for layer, acc in enumerate(accs if saved is not None else []):
        acc.restore(saved[0], f"{layer}.")
    batches = iter_hidden(model, data, batch_size=batch_size, progress=progress, desc="affine lens", skip=resumed)
    saved_at, done = time.monotonic(), resumed
    for done, hidden in enumerate(batches, start=resumed + 1):
        y = hidden[:, last]
        for layer, acc in enumerate(accs):
            acc.add(hidden[:, layer], y)
        if store is not None and time.monotonic() - saved_at >= CHECKPOINT_SECONDS:
            saved_at = time.monotonic()
            _save_sums(store, accs, done)
    if store is not None and done > resumed:
        _save_sums(store, accs, done)  # all of them: a run again only solves
    maps = {layer: acc.solve(ridge) for layer, acc in enumerate(accs)}
    maps[last] = identity_map(d)
    config = {
        "target_layer": last,
        "model": model_identity(model),
        "data": {**data.info(), "max_tokens": max_tokens, "seed": seed},
        "ridge": ridge,
        "seconds": round(time.perf_counter() - start, 1),
        **(extra_config or {}),
    }
    return Lens("affine", maps, config, data.document_keys())
