"""The future lens of Pal et al. (2023, "Future Lens: Anticipating Subsequent Tokens from a Single Hidden
State"): from one hidden state h_l(i), decode the tokens the model will produce N = 0, 1, 2, 3 positions later.

Data (as the paper's "teacher" data): a position i of a document, and the model's own greedy continuation
g_0, g_1, ... from it; the token N positions ahead is g_N (N = 0 is the model's next token). The later runs
read g_0 ... g_{N-1} (teacher forcing), as the original's evaluation does.

Three methods:

- **linear**: a least-squares affine map per (layer l, offset N) from h_l(i) to the last layer's state at
  i + N, decoded by the final norm and unembedding (the original fits it in closed form);
- **fixed prompt**: h_l(i) patched at l* = l into the last position of a generic prompt
  (:data:`FIXED_PROMPT`, the paper's ``Hello! Could you please tell me more about "``), followed by
  g_0 ... g_{N-1}; the prediction at the end is read;
- **learned prompt**: the same with a soft prompt of k vectors trained, per layer, so that the patched run's
  distributions match the model's own at i + N (KL(model ‖ patched), summed over N, as the original).

A lens is saved as a folder: ``future.safetensors`` (``linear.{l}.{N}.weight/bias``, ``prompt.{l}``, the fitting
documents' hashes) and ``future.json`` (model identity, layers, offsets, data, training). Training writes a
resumable safetensors checkpoint (``checkpoint.safetensors``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from patchscopes.data.text import Document, data_fingerprint, token_windows
from patchscopes.engine import capture_states, greedy_token_ids
from patchscopes.engine.gradients import embed_tokens, soft_prompt_logits
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.affine import AffineAccumulator
from patchscopes.lenses.base import check_model_identity, compare_identity, digest_key, fitted_on, model_identity
from patchscopes.mappings import Affine
from patchscopes.models import LanguageModel
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.soft_prompt import SoftPrompt
from patchscopes.storage import atomic_write, read_folder, read_safetensors, write_folder

FIXED_PROMPT = 'Hello! Could you please tell me more about "'
"""The original's first generic context (its ``_COMPARE_CONTEXT``)."""
DEFAULT_OFFSETS = (0, 1, 2, 3)
FORMAT = "patchscopes-future-lens"
CONFIG_FILE = "future.json"
WEIGHTS_FILE = "future.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
RUN_CHECKPOINT_FILE = "future-lens-checkpoint.safetensors"
"""The training checkpoint's name in a run directory."""
_STATE = "future-lens"


# -- data --------------------------------------------------------------------------------------------------
@dataclass
class FutureSamples:
    """Positions of documents and the model's greedy continuations from them.

    Attributes:
        prefixes: The token ids up to and including position i (the source).
        continuations: The model's next tokens g_0 ... g_{M-1} after i (M = the largest offset + 1).
        digests: The SHA-256 of each sample's document.
        texts: The documents' texts (for the data fingerprint).
    """

    prefixes: list[tuple[int, ...]]
    continuations: list[tuple[int, ...]]
    digests: list[str]
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prefixes)

    def info(self) -> dict:
        """The ``data`` entry of a lens config."""
        return {"fingerprint": data_fingerprint(sorted(set(self.texts))), "documents": len(set(self.digests)),
                "samples": len(self)}

    def document_keys(self) -> torch.Tensor:
        return torch.tensor(sorted({digest_key(d) for d in self.digests}), dtype=torch.long)


def sample_future_positions(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    samples: int,
    max_offset: int = 3,
    max_tokens: int = 64,
    min_context: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> FutureSamples:
    """One random position per window of the documents (seeded), at least ``min_context`` text tokens in, and
    the model's greedy continuation of ``max_offset + 1`` tokens from it; positions whose continuation ends
    early (end of sequence) are dropped.

    Raises:
        PatchscopesError: No document is long enough, or ``samples`` < 1.
    """
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    if max_offset < 0:
        raise PatchscopesError(f"offsets must be non-negative, got {max_offset}")
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    windows, _ = token_windows(model, docs, max_tokens=max_tokens, min_tokens=min_context)
    if not windows:
        raise PatchscopesError(f"no document is long enough ({min_context} tokens or more)",
                               hint="give more or longer text")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=g).tolist()
    out = FutureSamples([], [], [], [])
    need = max_offset + 1
    # Each window gives at most one sample: with fewer windows than samples, the bar counts to the windows (a
    # total of ``samples`` would estimate the time of samples that cannot be drawn, then stop short at once).
    bar = tqdm(total=min(samples, len(windows)), desc="continuations", unit="sample", disable=not progress)
    try:
        for first in range(0, len(order), 4 * batch_size):
            chunk = [windows[i] for i in order[first: first + 4 * batch_size]]
            prefixes = []
            for w in chunk:
                lo = w.start + min_context - 1
                i = lo + int(torch.randint(0, len(w.ids) - lo, (1,), generator=g))
                prefixes.append(tuple(w.ids[: i + 1]))
            continued = greedy_token_ids(model, prefixes, need, batch_size=batch_size)
            for w, prefix, cont in zip(chunk, prefixes, continued):
                if len(cont) == need and len(out) < samples:
                    out.prefixes.append(prefix)
                    out.continuations.append(tuple(cont))
                    out.digests.append(w.digest)
                    out.texts.append(docs[w.document].text)
                    bar.update(1)
            if len(out) >= samples:
                break
    finally:
        bar.close()
    if not len(out):
        raise PatchscopesError("no position has a continuation of the length asked for", hint="give more text")
    return out


def future_states(
    model: LanguageModel, data: FutureSamples, layers: Sequence[int], max_offset: int, *, batch_size: int = 32,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h_l(i) at each of ``layers`` and the last layer's states at i, ..., i + ``max_offset``.

    Returns:
        ``(n, len(layers), d)`` and ``(n, max_offset + 1, d)``, float32.
    """
    last = model.num_layers - 1
    read = sorted({*layers, last})
    sources, finals = [], []
    order = range(0, len(data), batch_size)
    for first in tqdm(order, desc="hidden states", unit="batch", disable=not progress):
        rows = range(first, min(first + batch_size, len(data)))
        seqs = [data.prefixes[r] + data.continuations[r][:max_offset] for r in rows]
        positions = [[len(data.prefixes[r]) - 1 + n for n in range(max_offset + 1)] for r in rows]
        states = capture_states(model, seqs, positions, read).reshape(len(rows), max_offset + 1, len(read), -1)
        sources.append(states[:, 0, [read.index(x) for x in layers]])
        finals.append(states[:, :, read.index(last)])
    return torch.cat(sources), torch.cat(finals)


# -- the lens ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class FutureLens:
    """The fitted parts of the future lens: linear maps per (layer, offset) and learned prompts per layer.

    Attributes:
        layers: The source layers l.
        offsets: The offsets N.
        linear: ``{(l, N): Affine}`` from h_l(i) to the last layer's state at i + N.
        prompts: ``{l: (k, d) tensor}``, the learned soft prompt of each layer (patched at its last position).
        config: Model identity, data, settings, training losses and times.
        fit_documents: Hashes of the fitting documents (an evaluation leaves them out).
    """

    layers: list[int]
    offsets: list[int]
    linear: dict[tuple[int, int], Affine] = field(default_factory=dict)
    prompts: dict[int, torch.Tensor] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    fit_documents: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __repr__(self) -> str:
        return (f"FutureLens(model={self.config.get('model', {}).get('name')!r}, layers={self.layers}, "
                f"offsets={self.offsets}, prompts={sorted(self.prompts)})")

    def check_model(self, model: LanguageModel) -> None:
        """Raise a :class:`PatchscopesError` unless the lens was fitted on ``model``."""
        check_model_identity(self.config.get("model", {}), model, "the future lens")

    def soft_prompt(self, layer: int) -> SoftPrompt:
        """The learned prompt of ``layer`` as a target prompt (patch h at its last vector, l* = layer).

        Raises:
            PatchscopesError: The lens has no prompt for that layer.
        """
        if layer not in self.prompts:
            raise PatchscopesError(f"the future lens has no learned prompt for layer {layer}",
                                   hint=f"it has prompts for layers {sorted(self.prompts)}")
        # As in training, the vectors come first, with no special token before them.
        return SoftPrompt(self.prompts[layer], before=(), name=f"future-lens prompt[{layer}]",
                          metadata={"model": self.config.get("model", {})})

    def overlaps(self, digests: Sequence[str]) -> list[bool]:
        """For each document digest, whether the lens was fitted on that document."""
        return fitted_on(self.fit_documents, digests)

    def save(self, directory: str | Path) -> Path:
        """Write ``future.safetensors`` and ``future.json`` into ``directory``."""
        tensors = {"fit_documents": self.fit_documents.to(torch.long)}
        for (layer, offset), affine in self.linear.items():
            tensors[f"linear.{layer}.{offset}.weight"] = affine.weight.detach()
            tensors[f"linear.{layer}.{offset}.bias"] = affine.bias.detach()
        for layer, prompt in self.prompts.items():
            tensors[f"prompt.{layer}"] = prompt.detach().float()
        config = {"format": FORMAT, "version": 1, "layers": self.layers, "offsets": self.offsets, **self.config}
        return write_folder(directory, CONFIG_FILE, WEIGHTS_FILE, config, tensors, {"format": FORMAT},
                            "the future lens")

    @classmethod
    def load(cls, directory: str | Path, model: LanguageModel | None = None) -> FutureLens:
        """Read a lens written by :meth:`save`; with ``model``, check it was fitted on that model.

        Raises:
            PatchscopesError: The folder is not a future lens, or the lens belongs to another model.
        """
        config, tensors = read_folder(
            directory, CONFIG_FILE, WEIGHTS_FILE, "a future-lens",
            hint="make one with `patchscopes fit-future-lens --model M --text FILE --out DIR`")
        if config.pop("format", None) != FORMAT:
            raise PatchscopesError(f"{Path(directory) / CONFIG_FILE} is not a future-lens config")
        config.pop("version", None)
        layers, offsets = config.pop("layers"), config.pop("offsets")
        linear, prompts = {}, {}
        for key, value in tensors.items():
            parts = key.split(".")
            if parts[0] == "linear" and parts[3] == "weight":
                layer, offset = int(parts[1]), int(parts[2])
                linear[(layer, offset)] = Affine(value, tensors[f"linear.{layer}.{offset}.bias"],
                                                 name=f"future-linear[{layer},{offset}]")
            elif parts[0] == "prompt":
                prompts[int(parts[1])] = value
        lens = cls(layers, offsets, linear, prompts, config, tensors.get("fit_documents", torch.zeros(0)))
        if model is not None:
            lens.check_model(model)
        return lens


def fit_linear(
    sources: torch.Tensor, finals: torch.Tensor, layers: Sequence[int], offsets: Sequence[int], *, ridge: float = 0.0
) -> dict[tuple[int, int], Affine]:
    """The linear method: least squares with bias from h_l(i) (``sources[:, k]``) to the last layer's state
    at i + N (``finals[:, N]``), per (layer, offset)."""
    maps = {}
    for k, layer in enumerate(layers):
        for offset in offsets:
            acc = AffineAccumulator(sources.shape[-1], finals.shape[-1])
            acc.add(sources[:, k], finals[:, offset])
            maps[(layer, offset)] = acc.solve(ridge)
            maps[(layer, offset)].name = f"future-linear[{layer},{offset}]"
    return maps


# -- the learned prompt ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSettings:
    """Training settings of the learned prompts (saved with them and in checkpoints).

    Attributes:
        prompt_length: k, the number of soft-prompt vectors.
        steps: Optimizer steps per layer.
        batch_size: Samples per step.
        lr: AdamW learning rate (the original: 5e-4 on GPT-J; small models like more).
        weight_decay: AdamW weight decay (the original: 1e-5).
        seed: Seed of the batches.
    """

    prompt_length: int = 10
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-2
    weight_decay: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_length", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise PatchscopesError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise PatchscopesError(f"the learning rate must be positive, got {self.lr}")


def initial_prompt(model: LanguageModel, length: int, text: str = FIXED_PROMPT) -> torch.Tensor:
    """The embeddings of ``text``'s tokens, cut or cycled to ``length`` vectors: where training starts."""
    ids = model.encode(text)
    cycled = [ids[i % len(ids)] for i in range(max(0, len(ids) - length), max(0, len(ids) - length) + length)]
    with torch.no_grad():
        return embed_tokens(model, torch.tensor(cycled)).float().cpu()


def prompt_loss(
    model: LanguageModel, prompt: torch.Tensor, layer: int, h: torch.Tensor, continuation: torch.Tensor,
    target_logprobs: torch.Tensor,
) -> torch.Tensor:
    """KL(model ‖ patched) summed over the offsets and averaged over the batch: the original's loss.

    Args:
        prompt: ``(k, d)``.
        h: ``(b, d)`` source states, patched at the prompt's last position at ``layer``.
        continuation: ``(b, M - 1)`` the tokens g_0 ... g_{M-2} read after the prompt.
        target_logprobs: ``(b, M, vocab)`` the model's own log-probabilities at i, ..., i + M - 1.
    """
    logits = soft_prompt_logits(model, prompt, continuation, layer, h)
    logq = torch.log_softmax(logits, dim=-1)
    return (target_logprobs.exp() * (target_logprobs - logq)).sum(-1).sum(-1).mean()


def train_prompt(
    model: LanguageModel,
    layer: int,
    sources: torch.Tensor,
    finals: torch.Tensor,
    continuations: torch.Tensor,
    settings: PromptSettings,
    *,
    init: torch.Tensor | None = None,
    state: dict | None = None,
    on_step: Callable[[int, float, torch.Tensor, torch.optim.Optimizer, list[float]], None] | None = None,
    bar=None,
) -> tuple[torch.Tensor, list[float]]:
    """Train the soft prompt of one layer (AdamW on the k prompt vectors; the model stays frozen).

    Args:
        sources: ``(n, d)`` h_l(i).
        finals: ``(n, M, d)`` the last layer's states at i ... i + M - 1 (their distributions are the targets).
        continuations: ``(n, M)`` g_0 ... g_{M-1}.
        init: The starting prompt (default: :func:`initial_prompt`).
        state: A checkpointed ``{"prompt", "optimizer", "step", "losses"}`` to resume from.
        on_step: Called after each step with ``(step, loss, prompt, optimizer, losses)``.
        bar: A tqdm bar advanced once a step.

    Returns:
        The prompt ``(k, d)`` and the loss of each step.
    """
    s = settings
    prompt = (init if init is not None else initial_prompt(model, s.prompt_length)).clone().requires_grad_(True)
    opt = torch.optim.AdamW([prompt], lr=s.lr, weight_decay=s.weight_decay)
    step0, losses = 0, []
    if state is not None:
        with torch.no_grad():
            prompt.copy_(state["prompt"])
        opt.load_state_dict(state["optimizer"])
        step0, losses = state["step"], list(state["losses"])
    n = sources.shape[0]
    params = list(model.hf.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for step in range(step0, s.steps):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + layer * 10_007 + step)
            batch = torch.randint(0, n, (min(s.batch_size, n),), generator=g)
            with torch.no_grad():
                target = torch.log_softmax(model.head(finals[batch].to(model.dtype)).float(), dim=-1)
            opt.zero_grad(set_to_none=True)
            loss = prompt_loss(model, prompt, layer, sources[batch], continuations[batch, :-1], target)
            loss.backward()
            opt.step()
            losses.append(round(loss.item(), 6))
            if bar is not None:
                bar.set_postfix(layer=layer, kl=f"{loss.item():.3f}")
                bar.update(1)
            if on_step is not None:
                on_step(step + 1, loss.item(), prompt, opt, losses)
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
    return prompt.detach().clone(), losses


def fit_future_lens(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    layers: Sequence[int],
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    samples: int = 2000,
    ridge: float = 0.0,
    prompt: PromptSettings | None = None,
    train_prompts: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    seed: int = 0,
    extra_config: dict | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
) -> FutureLens:
    """Fit the linear maps and train the learned prompts of the future lens on ``documents``.

    Args:
        model: The model.
        documents: The fitting documents (never the evaluation documents).
        layers: Source layers l.
        offsets: Offsets N (0: the next token).
        samples: Positions to fit on (one per window).
        ridge: Ridge term of the linear maps.
        prompt: Learned-prompt settings.
        train_prompts: Train the learned prompts (else only the linear maps).
        checkpoint: The training state is saved here every ``checkpoint_every`` steps and resumed from if it
            was written with the same model, data and settings.
        checkpoint_every: Steps between checkpoints.
        seed: Seed of the positions.
        options: The fit's ``progress`` bars and ``run_dir`` (:class:`~patchscopes.runs.RunOptions`: the training
            checkpoint and the fitted lens are kept there); 0.2's ``progress=``/``run_dir=`` still work, with a
            warning.
        extra_config: More entries for the saved config.

    Raises:
        PatchscopesError: Bad settings, too little text, a checkpoint of another model, data or settings, or a
            run directory of another run.
    """
    options = run_options(options, legacy, "fit_future_lens")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="fit_future_lens", models=[model], data=documents,
                         settings=settings_of(locals(), exclude=("model", "documents", "extra_config", "checkpoint",
                                                                 "checkpoint_every", "engine", "budget")))
    if store is not None:
        saved = store.load_state(_STATE)
        if saved is not None:
            return _lens_from_state(*saved)
        if checkpoint is None:
            checkpoint = store.file(RUN_CHECKPOINT_FILE)
    start = time.perf_counter()
    layers = sorted({model.check_layer(x) for x in layers})
    offsets = sorted(set(offsets))
    if not layers or not offsets or offsets[0] < 0:
        raise PatchscopesError("give at least one layer and non-negative offsets")
    settings = prompt or PromptSettings()
    data = sample_future_positions(model, documents, samples=samples, max_offset=offsets[-1], seed=seed,
                                   progress=progress)
    sources, finals = future_states(model, data, layers, offsets[-1], progress=progress)
    linear = fit_linear(sources, finals, layers, offsets, ridge=ridge)
    conts = torch.tensor([list(c) for c in data.continuations])
    info = {**data.info(), "seed": seed}
    identity = {"model": model_identity(model), "data_fingerprint": info["fingerprint"], "layers": layers,
                "offsets": offsets, "settings": {k: v for k, v in settings.__dict__.items() if k != "steps"}}
    prompts: dict[int, torch.Tensor] = {}
    losses: dict[int, list[float]] = {}
    if train_prompts:
        ckpt = Path(checkpoint) if checkpoint is not None else None
        states = load_prompt_checkpoint(ckpt, identity) if ckpt is not None and ckpt.is_file() else {}
        bar = tqdm(total=settings.steps * len(layers), desc="learned prompts", unit="step", disable=not progress,
                   initial=sum(min(states[x]["step"], settings.steps) for x in layers if x in states))
        try:
            for k, layer in enumerate(layers):
                state = states.get(layer)
                if state is not None and state["step"] >= settings.steps:
                    prompts[layer], losses[layer] = state["prompt"], state["losses"][: settings.steps]
                    continue

                def on_step(step, loss, tensor, opt, step_losses, layer=layer):
                    states[layer] = {"prompt": tensor, "optimizer": opt.state_dict(), "step": step,
                                     "losses": step_losses}
                    if ckpt is not None and (step % checkpoint_every == 0 or step == settings.steps):
                        save_prompt_checkpoint(ckpt, identity, states)

                prompts[layer], losses[layer] = train_prompt(
                    model, layer, sources[:, k], finals[:, : offsets[-1] + 1], conts, settings, state=state,
                    on_step=on_step, bar=bar)
        finally:
            bar.close()
    config = {
        "model": model_identity(model),
        "data": info,
        "ridge": ridge,
        "fixed_prompt": FIXED_PROMPT,
        "training": {**settings.__dict__, "loss": "KL(model || patched) summed over the offsets, nats",
                     "init": "the fixed prompt's token embeddings", "optimizer": "adamw",
                     "losses": {str(k): v for k, v in losses.items()}} if train_prompts else None,
        "seconds": round(time.perf_counter() - start, 1),
        **(extra_config or {}),
    }
    lens = FutureLens(layers, offsets, linear, prompts, config, data.document_keys())
    if store is not None:
        store.save_state(_STATE, *_lens_state(lens))
    return lens


def _lens_state(lens: FutureLens) -> tuple[dict[str, torch.Tensor], dict]:
    """A fitted lens as a run directory's state: its tensors, and the rest as JSON."""
    tensors = {"fit_documents": lens.fit_documents.to(torch.long)}
    for (layer, offset), affine in lens.linear.items():
        tensors[f"linear.{layer}.{offset}.weight"] = affine.weight
        tensors[f"linear.{layer}.{offset}.bias"] = affine.bias
    for layer, prompt in lens.prompts.items():
        tensors[f"prompt.{layer}"] = prompt
    return tensors, {"layers": lens.layers, "offsets": lens.offsets, "config": lens.config}


def _lens_from_state(tensors: dict[str, torch.Tensor], meta: dict) -> FutureLens:
    """The lens :func:`_lens_state` kept."""
    linear = {(int(x), int(o)): Affine(tensors[f"linear.{x}.{o}.weight"], tensors[f"linear.{x}.{o}.bias"],
                                       name=f"future-linear[{x},{o}]")
              for x in meta["layers"] for o in meta["offsets"] if f"linear.{x}.{o}.weight" in tensors}
    prompts = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("prompt.")}
    return FutureLens(list(meta["layers"]), list(meta["offsets"]), linear, prompts, meta["config"],
                      tensors["fit_documents"])


def save_prompt_checkpoint(path: Path, identity: dict, states: dict[int, dict]) -> None:
    """The training state of every layer as safetensors: prompts and AdamW moments as tensors, the rest
    (identity, steps, losses, optimizer settings) as JSON in the metadata. Nothing is pickled."""
    from safetensors.torch import save_file

    tensors, meta_states = {}, {}
    for layer, state in states.items():
        tensors[f"{layer}.prompt"] = state["prompt"].detach().float().clone().contiguous()
        opt = state["optimizer"]
        values = {}
        for index, slot in opt["state"].items():
            for name, value in slot.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{layer}.optimizer.{index}.{name}"] = value.detach().clone().contiguous()
                else:
                    values[f"{index}.{name}"] = value
        meta_states[str(layer)] = {"step": state["step"], "losses": list(state["losses"]),
                                   "param_groups": opt["param_groups"], "optimizer_values": values}
    metadata = {"format": FORMAT, "checkpoint": json.dumps({"identity": identity, "layers": meta_states})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_prompt_checkpoint(path: Path, identity: dict) -> dict[int, dict]:
    """The states written by :func:`save_prompt_checkpoint`, refused if they belong to other data or settings.

    Returns:
        ``{layer: {"prompt", "optimizer", "step", "losses"}}``.
    """
    hint = "delete it to start training afresh"
    metadata, tensors = read_safetensors(path, "the checkpoint", hint=hint)
    try:
        meta = json.loads(metadata["checkpoint"])
    except (KeyError, ValueError) as err:
        raise PatchscopesError(f"{path} is not a future-lens checkpoint", hint=hint) from err
    saved = meta.get("identity", {})
    identity = json.loads(json.dumps(identity))
    for key, what in (("data_fingerprint", "fitting data"), ("settings", "settings"), ("layers", "layers"),
                      ("offsets", "offsets")):
        if saved.get(key) != identity[key]:
            raise PatchscopesError(f"the checkpoint {path} was written with other {what}",
                                   hint="use the same model, text and settings to resume, or delete the checkpoint")
    compare_identity(saved.get("model", {}), identity["model"], f"the checkpoint {path}")
    states = {}
    for layer, state in meta["layers"].items():
        slots: dict[int, dict] = {}
        for key, value in state["optimizer_values"].items():
            index, name = key.split(".", 1)
            slots.setdefault(int(index), {})[name] = value
        prefix = f"{layer}.optimizer."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, name = key[len(prefix):].split(".", 1)
                slots.setdefault(int(index), {})[name] = value
        states[int(layer)] = {"prompt": tensors[f"{layer}.prompt"], "step": state["step"], "losses": state["losses"],
                              "optimizer": {"state": slots, "param_groups": state["param_groups"]}}
    return states
