"""The tuned lens of Belrose et al.: translators h + A h + b trained so that the lens's next-token
distribution matches the model's own final distribution (KL(final ‖ lens)), with resumable safetensors
checkpoints."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from patchscopes.data.text import Document
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.base import (
    FORMAT,
    Lens,
    compare_identity,
    identity_map,
    model_identity,
)
from patchscopes.lenses.fit_data import iter_hidden, plan_fit_data
from patchscopes.mappings import Affine
from patchscopes.models import LanguageModel
from patchscopes.runs import RunOptions, run_options
from patchscopes.storage import atomic_write, check_finite


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
    extra_config: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
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
        extra_config: More entries for the saved config.
        on_step: Called with ``(step, mean loss over layers)`` after each step.
        options: The fit's ``progress`` bars (:class:`~patchscopes.runs.RunOptions`; off by default, as in
            every fit); 0.2's ``progress=`` still works, with a warning.

    Returns:
        The lens; the last layer's map is the identity.

    Raises:
        PatchscopesError: Bad settings, or a checkpoint from another model, data or settings.
    """
    options = run_options(options, legacy, "train_tuned_lens")
    progress = options.progress
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
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT,
                                                                          "checkpoint": json.dumps(meta)}))


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
    check_finite(tensors, path, "the checkpoint")
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
