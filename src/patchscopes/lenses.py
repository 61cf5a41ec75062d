"""Lenses: one map per layer l from the hidden state at layer l to the last layer, saved and reloaded.

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

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from patchscopes.batched import left_pad
from patchscopes.errors import PatchscopesError
from patchscopes.hooks import StopForward, capture_hook, hooks_on
from patchscopes.mappings import Affine
from patchscopes.model import LanguageModel
from patchscopes.text_data import Document, Window, data_fingerprint, token_windows

LENS_KINDS = ("affine", "tuned")
CONFIG_FILE = "lens.json"
WEIGHTS_FILE = "lens.safetensors"
FORMAT = "patchscopes-lens"
_PROBE_SIZE = 32


# -- model identity --------------------------------------------------------------------------------------
def model_identity(model: LanguageModel) -> dict:
    """What a lens records about its model: name, family, sizes and a small sample of the output weights.

    The sample (``probe``) tells two models of the same shape apart, and survives a change of dtype.
    """
    weight = model.arch.unembed.weight.detach()
    flat = weight.reshape(-1)
    index = (torch.arange(_PROBE_SIZE, dtype=torch.long) * (flat.numel() - 1) // (_PROBE_SIZE - 1)).to(flat.device)
    probe = flat[index].float().cpu().tolist()
    return {
        "name": model.name,
        "family": model.arch.spec.name,
        "num_layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "vocab_size": model.vocab_size,
        "probe": [round(v, 6) for v in probe],
    }


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
        from safetensors.torch import save_file

        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tensors = {"fit_documents": self.fit_documents.to(torch.long).contiguous().cpu()}
            for layer, affine in self.maps.items():
                tensors[f"layer.{layer}.weight"] = affine.weight.detach().contiguous().cpu()
                tensors[f"layer.{layer}.bias"] = affine.bias.detach().contiguous().cpu()
            save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, "kind": self.kind})
            config = {"format": FORMAT, "version": 1, "kind": self.kind, "layers": self.layers, **self.config}
            (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        except OSError as err:
            raise PatchscopesError(f"could not write the lens to {directory}: {err.strerror or err}") from err
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: LanguageModel | None = None) -> Lens:
        """Read a lens written by :meth:`save`; with ``model``, check it was fitted on that model.

        Raises:
            PatchscopesError: The folder is not a lens, or the lens belongs to another model.
        """
        from safetensors import safe_open

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise PatchscopesError(
                f"{directory} is not a lens folder (it needs {CONFIG_FILE} and {WEIGHTS_FILE})",
                hint="make one with `patchscopes fit-lens --model M --text FILE --out DIR`",
            )
        try:
            config = json.loads(config_path.read_text())
            with safe_open(str(weights_path), framework="pt") as fh:
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        except Exception as err:
            raise PatchscopesError(f"could not read the lens in {directory}: {err}") from err
        if config.get("format") != FORMAT:
            raise PatchscopesError(f"{config_path} is not a patchscopes lens config")
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
        fitted = set(self.fit_documents.tolist())
        return [digest_key(d) in fitted for d in digests]


def digest_key(digest: str) -> int:
    """A document's SHA-256 hex digest as a 60-bit integer (its first 15 hex digits)."""
    return int(digest[:15], 16)


def identity_map(d: int) -> Affine:
    """The identity as an :class:`Affine` (the map of the last layer to itself)."""
    return Affine(torch.eye(d), torch.zeros(d))


# -- hidden states at sampled positions ------------------------------------------------------------------
@dataclass
class FitData:
    """The windows and positions a lens is fitted on.

    Attributes:
        windows: The windows (each contributes several positions).
        positions: For each window, the positions sampled (text tokens after the first).
        documents: The documents the windows come from.
        skipped: Windows skipped as too short.
    """

    windows: list[Window]
    positions: list[list[int]]
    documents: list[Document]
    skipped: int

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.positions)

    def info(self) -> dict:
        """The ``data`` entry of a lens config."""
        used = sorted({w.document for w in self.windows})
        return {
            "fingerprint": data_fingerprint(self.documents[i].text for i in used),
            "documents": len(used),
            "windows": len(self.windows),
            "samples": self.samples,
            "skipped_windows": self.skipped,
        }

    def document_keys(self) -> torch.Tensor:
        used = sorted({w.document for w in self.windows})
        return torch.tensor([digest_key(self.documents[i].digest) for i in used], dtype=torch.long)


def plan_fit_data(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    samples: int,
    max_tokens: int = 64,
    seed: int = 0,
) -> FitData:
    """Choose windows (shuffled, seeded) and use every text position after the first until ``samples``.

    Every position of a window is a sample: a forward pass yields as many vectors as it reads tokens. The
    first text token of a window is left out (with no context it carries the attention-sink outliers of
    models without a ``<bos>`` token).

    Raises:
        PatchscopesError: No document is long enough.
    """
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    windows, skipped = token_windows(model, docs, max_tokens=max_tokens, min_tokens=2)
    if not windows:
        raise PatchscopesError(
            "no fitting document is long enough (2 tokens or more)", hint="give more or longer text"
        )
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, positions, total = [], [], 0
    for i in order:
        if total >= samples:
            break
        w = windows[i]
        pos = list(range(w.start + 1, len(w.ids)))[: samples - total]
        chosen.append(w)
        positions.append(pos)
        total += len(pos)
    return FitData(chosen, positions, docs, skipped)


def capture_all_layers(
    model: LanguageModel, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The output of every block at the given positions of each sequence, from one batched forward.

    Args:
        model: The model.
        sequences: Token ids (run left-padded in one batch).
        positions: For each sequence, the positions to read.

    Returns:
        ``(n, L, d)`` in float32, rows in the order of the (sequence, position) pairs.
    """
    ids, mask, pos_ids, pads = left_pad(model, sequences)
    rows = torch.tensor([r for r, ps in enumerate(positions) for _ in ps])
    cols = torch.tensor([pads[r] + p for r, ps in enumerate(positions) for p in ps])
    last = model.num_layers - 1
    store: dict = {}
    hooks = {layer: capture_hook(rows, cols, store, layer, stop=layer == last) for layer in range(model.num_layers)}
    with torch.no_grad(), hooks_on(model.arch.blocks, hooks), contextlib.suppress(StopForward):
        model.forward(ids, attention_mask=mask, position_ids=pos_ids, logits_to_keep=1)
    return torch.stack([store[layer].float().cpu() for layer in range(model.num_layers)], dim=1)


def iter_hidden(
    model: LanguageModel, data: FitData, *, batch_size: int = 32, progress: bool = False, desc: str = "reading"
):
    """Yield ``(n, L, d)`` hidden states of ``data`` batch by batch (windows sorted by length)."""
    order = sorted(range(len(data.windows)), key=lambda i: len(data.windows[i].ids))
    bar = tqdm(total=data.samples, desc=desc, unit="vec", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            part = order[start: start + batch_size]
            seqs = [data.windows[i].ids[: max(data.positions[i]) + 1] for i in part]
            hidden = capture_all_layers(model, seqs, [data.positions[i] for i in part])
            bar.update(hidden.shape[0])
            yield hidden
    finally:
        bar.close()


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


def fit_affine_lens(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    ridge: float = 0.0,
    samples: int = 20000,
    max_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    extra_config: dict | None = None,
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
        progress: Show a progress bar.
        extra_config: More entries for the saved config (e.g. the files and the split).

    Returns:
        The lens; the last layer's map is the identity.
    """
    data = plan_fit_data(model, documents, samples=samples, max_tokens=max_tokens, seed=seed)
    last = model.num_layers - 1
    d = model.hidden_size
    accs = [AffineAccumulator(d, d) for _ in range(last)]
    start = time.perf_counter()
    for hidden in iter_hidden(model, data, batch_size=batch_size, progress=progress, desc="affine lens"):
        y = hidden[:, last]
        for layer, acc in enumerate(accs):
            acc.add(hidden[:, layer], y)
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


# -- tuned lens ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TunedLensSettings:
    """Training settings of a tuned lens (saved with it and in checkpoints).

    Attributes:
        steps: Optimizer steps.
        batch_size: Sampled positions per step (each trains every layer).
        lr: Learning rate at the start (it decays linearly to zero over the steps).
        optimizer: ``"adam"`` or ``"sgd"`` (SGD with Nesterov momentum 0.9).
        weight_decay: L2 penalty on the translators' residual weights.
        samples: Hidden-state vectors kept in memory to sample batches from.
        max_tokens: Window length in tokens.
        seed: Seed of the data and the batches.
    """

    steps: int = 150
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    samples: int = 8192
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise PatchscopesError(f"unknown optimizer {self.optimizer!r}", hint="use adam or sgd")
        for name in ("steps", "batch_size", "samples", "max_tokens"):
            if getattr(self, name) < 1:
                raise PatchscopesError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise PatchscopesError(f"the learning rate must be positive, got {self.lr}")


@contextlib.contextmanager
def _frozen(modules: Sequence[torch.nn.Module]):
    """Turn off gradients of ``modules``' parameters for the duration, then restore them."""
    params = [p for m in modules for p in m.parameters()]
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def kl_to_final(model: LanguageModel, lens_hidden: torch.Tensor, final_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean KL(final ‖ lens) in nats over a batch: ``lens_hidden`` is read through the model's head."""
    logq = torch.log_softmax(model.head(lens_hidden.to(model.dtype)).float(), dim=-1)
    p = final_logprobs.exp()
    return (p * (final_logprobs - logq)).sum(-1).mean()


def train_tuned_lens(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    settings: TunedLensSettings | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    extra_config: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Lens:
    """Train a tuned lens (Belrose et al. 2023): per layer, h ↦ h + A h + b minimizing KL(final ‖ lens).

    The translators start at the identity plus the mean shift to the last layer (A = 0, b = mean(h_{L-1} −
    h_l)), so that training starts from a sensible offset whatever the scale of the residual stream. The
    hidden states of ``settings.samples`` positions
    are read once and kept in memory; each step trains every layer on one random batch of them.

    Args:
        model: The model.
        documents: The fitting documents (never the evaluation documents).
        settings: Training settings.
        checkpoint: A file to save the training state to every ``checkpoint_every`` steps; if it exists and
            was written with the same model, data and settings, training resumes from it.
        checkpoint_every: Steps between checkpoints.
        progress: Show progress bars.
        extra_config: More entries for the saved config.
        on_step: Called with ``(step, mean loss over layers)`` after each step.

    Returns:
        The lens; the last layer's map is the identity.

    Raises:
        PatchscopesError: Bad settings, or a checkpoint from another model, data or settings.
    """
    s = settings or TunedLensSettings()
    data = plan_fit_data(model, documents, samples=s.samples, max_tokens=s.max_tokens, seed=s.seed)
    last = model.num_layers - 1
    d = model.hidden_size
    info = {**data.info(), "max_tokens": s.max_tokens, "seed": s.seed}
    # What a checkpoint must share to be resumed (the number of steps may grow).
    identity = {"model": model_identity(model), "data_fingerprint": info["fingerprint"],
                "settings": {k: v for k, v in s.__dict__.items() if k != "steps"}, "samples": data.samples}

    weights = torch.zeros(last, d, d, requires_grad=True)
    biases = torch.zeros(last, d, requires_grad=True)
    if s.optimizer == "adam":
        opt = torch.optim.Adam([weights, biases], lr=s.lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD([weights, biases], lr=s.lr, momentum=0.9, nesterov=True)
    step0, losses = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = _load_checkpoint(ckpt, identity)
        with torch.no_grad():
            weights.copy_(state["weights"])
            biases.copy_(state["biases"])
        opt.load_state_dict(state["optimizer"])
        step0, losses = state["step"], state["losses"]

    start = time.perf_counter()
    if step0 < s.steps:
        hidden = torch.cat(list(iter_hidden(model, data, progress=progress, desc="reading hidden states")))
        n = hidden.shape[0]
        if step0 == 0:  # start at the identity, shifted by the mean difference to the last layer
            with torch.no_grad():
                biases.copy_((hidden[:, last:] - hidden[:, :last]).mean(0))
        bar = tqdm(total=s.steps, initial=step0, desc="tuned lens", unit="step", disable=not progress)
        try:
            with _frozen([model.hf]):
                for step in range(step0, s.steps):
                    g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
                    batch = torch.randint(0, n, (min(s.batch_size, n),), generator=g)
                    with torch.no_grad():
                        target = torch.log_softmax(model.head(hidden[batch, last].to(model.dtype)).float(), -1)
                    for group in opt.param_groups:  # linear decay to zero over the steps
                        group["lr"] = s.lr * (1 - step / s.steps)
                    opt.zero_grad(set_to_none=True)
                    total = 0.0
                    for layer in range(last):
                        h = hidden[batch, layer]
                        out = h + h @ weights[layer].T + biases[layer]
                        loss = kl_to_final(model, out, target)
                        if s.weight_decay:
                            loss = loss + s.weight_decay * weights[layer].pow(2).sum()
                        (loss / last).backward()
                        total += loss.item()
                    opt.step()
                    mean = total / last
                    losses.append(round(mean, 6))
                    bar.set_postfix(kl=f"{mean:.3f}")
                    bar.update(1)
                    if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == s.steps):
                        _save_checkpoint(ckpt, identity, step + 1, weights, biases, opt, losses)
                    if on_step is not None:
                        on_step(step + 1, mean)
        finally:
            bar.close()
    eye = torch.eye(d)
    maps = {layer: Affine((eye + weights[layer]).detach().clone(), biases[layer].detach().clone())
            for layer in range(last)}
    maps[last] = identity_map(d)
    config = {
        "target_layer": last,
        "model": model_identity(model),
        "data": info,
        "ridge": None,
        "training": {**s.__dict__, "loss": "KL(final || lens), nats", "init": "identity + mean shift",
                     "schedule": "linear decay",
                     "losses": losses,
                     "final_loss": losses[-1] if losses else None},
        "seconds": round(time.perf_counter() - start, 1),
        **(extra_config or {}),
    }
    return Lens("tuned", maps, config, data.document_keys())


def _save_checkpoint(path: Path, identity: dict, step: int, weights, biases, opt, losses) -> None:
    """Training state as safetensors: the tensors, and the rest (identity, step, losses, optimizer settings)
    as JSON in the file's metadata. Nothing is pickled."""
    from safetensors.torch import save_file

    tensors = {"weights": weights.detach().clone(), "biases": biases.detach().clone()}
    state = opt.state_dict()
    values = {}
    for index, slot in state["state"].items():
        for name, value in slot.items():
            key = f"optimizer.{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().clone().contiguous()
            else:
                values[key] = value
    meta = {"identity": identity, "step": step, "losses": list(losses), "param_groups": state["param_groups"],
            "optimizer_values": values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "checkpoint": json.dumps(meta)})
    os.replace(tmp, path)


def _load_checkpoint(path: Path, identity: dict) -> dict:
    """The state written by :func:`_save_checkpoint`, refused if it belongs to other data or settings."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["checkpoint"])
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:
        raise PatchscopesError(f"could not read the checkpoint {path}: {err}",
                               hint="delete it to start training afresh") from err
    saved = meta.get("identity", {})
    identity = json.loads(json.dumps(identity))  # compared as it was stored (tuples become lists)
    for key, what in (("data_fingerprint", "fitting data"), ("settings", "settings"), ("samples", "samples")):
        if saved.get(key) != identity[key]:
            raise PatchscopesError(
                f"the checkpoint {path} was written with other {what}",
                hint="use the same model, text and settings to resume, or delete the checkpoint to start afresh",
            )
    compare_identity(saved.get("model", {}), identity["model"], f"the checkpoint {path}")
    slots: dict[int, dict] = {}
    for key, value in [*meta["optimizer_values"].items(), *tensors.items()]:
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer = {"state": slots, "param_groups": meta["param_groups"]}
    return {"step": meta["step"], "losses": meta["losses"], "weights": tensors["weights"],
            "biases": tensors["biases"], "optimizer": optimizer}


def lens_summary(lens: Lens) -> str:
    """One line about a lens: kind, model, data and fit size."""
    data = lens.config.get("data", {})
    extra = f", ridge {lens.config.get('ridge')}" if lens.kind == "affine" else ""
    if lens.kind == "tuned":
        loss = lens.config.get("training", {}).get("final_loss")
        extra = f", final KL {loss:.3f} nats" if isinstance(loss, float) and not math.isnan(loss) else ""
    return (f"{lens.name} of {lens.config.get('model', {}).get('name')}: {len(lens.maps)} layers, "
            f"{data.get('samples')} vectors from {data.get('documents')} documents{extra}")
