"""Causal tracing (Meng et al. 2022, ROME) as patchscopes.

The corrupted run is the prompt with Gaussian noise of standard deviation ν on the subject's token
embeddings (T = S + noise; ROME's options: uniform noise on [-ν, ν] instead, and noise written over the
embeddings instead of added to them); each cell (l, i) restores the clean run's state there (Source = S at (l, i),
Target = the corrupted S at l* = l, i* = i) and reads p(answer) at the last token. The window variants
restore the output of the MLP or attention modules of ``window`` consecutive layers centred on l (ROME's
windows: ``[l - window // 2, l + ceil(window / 2))``, cut at the model's ends). Every measurement is averaged
over the noise samples:

- total effect: p_clean − p_corrupted;
- indirect effect of a cell: p_restored − p_corrupted.

By default ν = 3 × the standard deviation of the token embeddings (over the vocabulary; ROME takes it over
the subjects of its data set), every position of the prompt is traced (ROME's ``token_range="subject_last"``
traces only the subject's last token) and the answer is the model's own top prediction on the clean prompt.
:func:`~patchscopes.experiments.originals.rome_causal_trace` is ROME's procedure written plainly, which the
tests hold this equal to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from patchscopes.engine import capture_states
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.resolve import answer_token
from patchscopes.runner import run
from patchscopes.runs import RunOptions, run_options
from patchscopes.scope import AnswerProbs, EmbeddingNoise, NextToken, Patchscope, Source, Target, Write, token_span

Kind = Literal["state", "mlp", "attn"]
KINDS = ("state", "mlp", "attn")
NoiseKind = Literal["gaussian", "uniform"]
NOISE_KINDS = ("gaussian", "uniform")
TOKEN_RANGES = ("subject_last",)
COLORS = {"state": "Purples", "mlp": "Greens", "attn": "Reds"}


@dataclass
class CausalTrace:
    """The outcome of causal tracing on one prompt.

    Attributes:
        prompt: The prompt.
        tokens: Its tokens.
        subject: The positions of the subject's tokens.
        answer: The answer's first token, as text, and ``answer_id`` its id.
        kind: ``"state"``, ``"mlp"`` or ``"attn"``; ``window`` the window of the last two.
        noise_scale: ν (NaN where the noise was given and no scale was); ``noise_samples`` how many
            corrupted runs are averaged.
        p_clean, p_corrupted: p(answer) of the clean and (mean) corrupted runs.
        p_restored: p(answer) with each cell restored, ``(len(positions), layers)``: row ``r`` is the token
            ``positions[r]``.
        positions: The traced positions, the rows of ``p_restored`` (default: every token, in order).
        noise_kind: ``"gaussian"`` (N(0, ν²)) or ``"uniform"`` (U(-ν, ν)).
        replace: Whether the noise was written over the subject's embeddings instead of added.
        seed: The seed of the noise (``None`` where the noise was given).
        token_range: The token range asked for: ``None`` (every position), ``"subject_last"`` or a tuple
            of positions.
    """

    prompt: str
    tokens: list[str]
    subject: tuple[int, ...]
    answer: str
    answer_id: int
    kind: str
    window: int
    noise_scale: float
    noise_samples: int
    p_clean: float
    p_corrupted: float
    p_restored: np.ndarray = field(repr=False)
    positions: tuple[int, ...] | None = None
    noise_kind: str = "gaussian"
    replace: bool = False
    seed: int | None = None
    token_range: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.positions is None:
            self.positions = tuple(range(len(self.tokens)))

    @property
    def indirect_effect(self) -> np.ndarray:
        """p_restored − p_corrupted, ``(positions, layers)``."""
        return self.p_restored - self.p_corrupted

    @property
    def total_effect(self) -> float:
        """p_clean − p_corrupted."""
        return self.p_clean - self.p_corrupted

    def settings(self) -> dict:
        """How the trace was made, JSON-ready: the answer's token id, the kind and window, and the noise
        (kind, ν, samples, seed, replace) and token range; ν is ``None`` where it is unknown."""
        return {
            "answer_id": self.answer_id, "kind": self.kind, "window": self.window if self.kind != "state" else 1,
            "noise_kind": self.noise_kind, "noise_scale": None if math.isnan(self.noise_scale) else self.noise_scale,
            "noise_samples": self.noise_samples, "seed": self.seed, "replace": self.replace,
            "token_range": list(self.token_range) if isinstance(self.token_range, tuple) else self.token_range,
        }

    def records(self) -> list[dict]:
        """One record per (layer, traced position), each with the trace's :meth:`settings`."""
        settings = self.settings()
        out = []
        for row, pos in enumerate(self.positions):
            for layer in range(self.p_restored.shape[1]):
                p = float(self.p_restored[row, layer])
                out.append({
                    "layer": layer, "position": pos, "token": self.tokens[pos], "is_subject": pos in self.subject,
                    "answer": self.answer, "p_clean": self.p_clean, "p_corrupted": self.p_corrupted,
                    "p_restored": p, "indirect_effect": p - self.p_corrupted, "total_effect": self.total_effect,
                    **settings,
                })
        return out

    def to_frame(self) -> pd.DataFrame:
        """:meth:`records` as a table."""
        return pd.DataFrame(self.records())

    def figure(self, title: str | None = None):
        """ROME's heatmap: traced positions (rows, subject tokens starred) × layers, coloured by p_restored."""
        import plotly.graph_objects as go

        labels = [f"{i}: {self.tokens[i]!r}" + ("*" if i in self.subject else "") for i in self.positions]
        what = {"state": "a single layer's state", "mlp": f"MLP outputs of {self.window} layers",
                "attn": f"attention outputs of {self.window} layers"}[self.kind]
        fig = go.Figure(go.Heatmap(
            z=self.p_restored, x=list(range(self.p_restored.shape[1])), y=labels, colorscale=COLORS[self.kind],
            zmin=min(self.p_corrupted, float(self.p_restored.min())), colorbar={"title": f"p({self.answer.strip()})"},
            hovertemplate="layer %{x}<br>%{y}<br>p=%{z:.4f}<extra></extra>",
        ))
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(
            title=title or f"Restoring {what} after corrupting the subject (p clean {self.p_clean:.3f}, "
                           f"corrupted {self.p_corrupted:.3f})",
            xaxis_title="restored layer" if self.kind == "state" else "centre of the restored window",
            width=820, height=140 + 26 * len(self.positions))
        return fig


def embedding_std(model: LanguageModel, sample: int = 8192) -> float:
    """The standard deviation of the token-embedding outputs over (an even sample of) the vocabulary."""
    ids = torch.linspace(0, model.vocab_size - 1, min(sample, model.vocab_size)).long()
    with torch.no_grad():
        return float(model.arch.embed(ids.to(model.device)).float().std())


def noise_tensor(model: LanguageModel, n_tokens: int, samples: int, scale: float, seed: int,
                 kind: NoiseKind = "gaussian") -> torch.Tensor:
    """The noise of every sample, ``(samples, n_tokens, d)``, drawn from ``seed`` (a ``torch.Generator``):
    N(0, scale²) for ``kind="gaussian"``, U(-scale, scale) for ``"uniform"`` (ROME's ``uniform_noise``)."""
    if kind not in NOISE_KINDS:
        raise PatchscopesError(f"unknown noise kind {kind!r}", hint=f"use one of {', '.join(NOISE_KINDS)}")
    generator = torch.Generator().manual_seed(int(seed))
    shape = (samples, n_tokens, model.hidden_size)
    if kind == "uniform":
        return (torch.rand(shape, generator=generator) * 2 - 1) * scale
    return torch.randn(shape, generator=generator) * scale


def traced_positions(token_range: str | Sequence[int] | None, subject: tuple[int, ...], n: int
                     ) -> tuple[int, ...]:
    """The positions ``token_range`` traces in a prompt of ``n`` tokens whose subject is at ``subject``:
    every one (``None``), the subject's last (``"subject_last"``, as ROME), or the given ones (negative
    indices count from the end), in order.

    Raises:
        PatchscopesError: An unknown range, an empty one, a position out of range or given twice.
    """
    if token_range is None:
        return tuple(range(n))
    if isinstance(token_range, str):
        if token_range == "subject_last":
            return (subject[-1],)
        raise PatchscopesError(f"unknown token range {token_range!r}",
                               hint="use None (every position), 'subject_last' or a list of positions")
    positions = []
    for p in token_range:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not -n <= p < n:
            raise PatchscopesError(f"token range position {p!r} is not a position of the {n}-token prompt",
                                   hint=f"use positions in {-n}..{n - 1}")
        positions.append(int(p) % n)
    if not positions:
        raise PatchscopesError("the token range is empty", hint="give at least one position, or None for all")
    if len(set(positions)) != len(positions):
        raise PatchscopesError(f"the token range {list(token_range)} names a position twice")
    return tuple(positions)


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """ROME's window of ``window`` layers centred on ``layer``, cut at the model's ends."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def causal_trace(
    model: LanguageModel,
    prompt: str,
    subject: str,
    *,
    answer: str | None = None,
    kind: Kind = "state",
    window: int = 10,
    noise_samples: int = 10,
    noise_scale: float | None = None,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    noise_kind: NoiseKind = "gaussian",
    replace: bool = False,
    token_range: str | Sequence[int] | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
) -> CausalTrace:
    """Causal tracing of ``prompt`` with ``subject`` corrupted, every layer × every traced position.

    Args:
        model: The model.
        prompt: The prompt, e.g. ``"The Eiffel Tower is located in the city of"``.
        subject: The subject, a substring of the prompt (all its tokens are corrupted).
        answer: The answer whose probability is traced (its first token); default: the model's top
            prediction on the clean prompt.
        kind: ``"state"`` (one block output), ``"mlp"`` or ``"attn"`` (that module over a window).
        window: The window's size for ``"mlp"`` and ``"attn"`` (ROME: 10).
        noise_samples: Corrupted runs averaged (ROME: 10).
        noise_scale: ν, the standard deviation of Gaussian noise or the half-width of uniform noise;
            default 3 × :func:`embedding_std` (for either kind).
        seed: Seed of the noise (``torch.Generator``; see :func:`noise_tensor`).
        noise: The noise itself, ``(noise_samples, subject tokens, d)`` (``noise_scale`` and ``seed`` are
            unused, ``noise_kind`` only recorded), e.g. ROME's own draw.
        noise_kind: ``"gaussian"`` (N(0, ν²), ROME's default) or ``"uniform"`` (U(-ν, ν), ROME's
            ``uniform_noise=True``).
        replace: Write the noise over the subject's embeddings instead of adding it (ROME's ``replace``).
        token_range: The positions traced, the rows of the result: ``None`` (every token), ``"subject_last"``
            (the subject's last token only, as ROME) or a sequence of positions. ``p_restored`` has shape
            ``(len(trace.positions), layers)``.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Raises:
        PatchscopesError: The subject is not in the prompt, the answer is empty, the window is larger than
            the model, a count is not positive, or the noise kind or token range is unknown.
    """
    options = run_options(options, legacy, "causal_trace")
    if kind not in KINDS:
        raise PatchscopesError(f"unknown kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    n_layers = model.num_layers
    if kind != "state" and not 1 <= window <= n_layers:
        raise PatchscopesError(f"the window of {window} layers does not fit {model.name} ({n_layers} layers)",
                               hint=f"use a window in 1..{n_layers}")
    if noise_samples < 1:
        raise PatchscopesError(f"noise_samples must be at least 1, got {noise_samples}")
    if noise_scale is not None and not (isinstance(noise_scale, (int, float)) and not isinstance(noise_scale, bool)
                                        and math.isfinite(noise_scale) and noise_scale > 0):
        raise PatchscopesError(f"noise_scale must be a finite number above 0, got {noise_scale!r}",
                               hint="e.g. noise_scale=0.1, or leave it out for 3 × the embeddings' std")
    if noise_kind not in NOISE_KINDS:
        raise PatchscopesError(f"unknown noise kind {noise_kind!r}", hint=f"use one of {', '.join(NOISE_KINDS)}")
    if answer is not None and not answer.strip():
        raise PatchscopesError("the answer is empty", hint="give the answer's text, e.g. ' Paris'")
    if not subject or not subject.strip():
        raise PatchscopesError("the subject is empty", hint="give the subject as it appears in the prompt")
    ids = model.encode(prompt)
    span = token_span(model, prompt, ids, subject.strip(), "subject")
    positions = traced_positions(token_range, span, len(ids))
    if noise is None:
        scale = 3 * embedding_std(model) if noise_scale is None else float(noise_scale)
        noise = noise_tensor(model, len(span), noise_samples, scale, seed, noise_kind)
        used_seed: int | None = int(seed)
    else:
        scale = float("nan") if noise_scale is None else float(noise_scale)
        used_seed = None
        if noise.shape != (noise_samples, len(span), model.hidden_size):
            raise PatchscopesError(f"the noise has shape {tuple(noise.shape)}, expected "
                                   f"({noise_samples}, {len(span)}, {model.hidden_size})")
        if not bool(torch.isfinite(noise).all()):
            raise PatchscopesError("the noise given holds NaN or infinite values", hint="give finite noise")

    clean_readout = NextToken(top_k=1) if answer is None else AnswerProbs(answers=(answer,), top_k=1)
    clean = run(Patchscope(None, Target(prompt, 0), clean_readout), model, engine=options.engine)[0].readings
    if answer is None:
        answer_id, p_clean = clean.top_token_ids[0], clean.top_probs[0]
    else:
        answer_id, p_clean = answer_token(model, prompt, ids, answer), clean.answer_probs[0]
    readout = AnswerProbs(answers=(answer_id,), top_k=1)

    noises = [EmbeddingNoise(span, values=noise[k], replace=bool(replace)) for k in range(noise_samples)]
    cells = [(pos, layer) for pos in positions for layer in range(n_layers)]
    clean_sites = None
    if kind != "state":
        clean_sites = capture_states(model, [ids], [list(range(len(ids)))], site=kind)  # (n, L, d)
    scopes = []
    for k in range(noise_samples):
        scopes.append(Patchscope(None, Target(prompt, 0, noise=noises[k]), readout))
        for pos, layer in cells:
            if kind == "state":
                scopes.append(Patchscope(Source(prompt, layer, pos), Target(prompt, layer, pos, noise=noises[k]),
                                         readout))
            else:
                writes = tuple(Write(j, pos, clean_sites[pos, j], site=kind)
                               for j in window_layers(layer, window, n_layers))
                scopes.append(Patchscope(None, Target(prompt, 0, writes=writes, noise=noises[k]), readout))
    results = run(scopes, model, **options.run_kwargs())
    per_sample = len(cells) + 1
    probs = np.array([r.readings.answer_probs[0] for r in results]).reshape(noise_samples, per_sample)
    p_corrupted = float(probs[:, 0].mean())
    restored = probs[:, 1:].mean(axis=0).reshape(len(positions), n_layers)
    return CausalTrace(
        prompt=prompt, tokens=model.token_labels(ids), subject=span, answer=model.token_labels([answer_id])[0],
        answer_id=int(answer_id), kind=kind, window=window, noise_scale=scale, noise_samples=noise_samples,
        p_clean=float(p_clean), p_corrupted=p_corrupted, p_restored=restored, positions=positions,
        noise_kind=noise_kind, replace=bool(replace), seed=used_seed,
        token_range=token_range if token_range is None or isinstance(token_range, str) else positions,
    )
