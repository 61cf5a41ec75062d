"""Describe any vector: SAE features, steering vectors and probe directions as patchscopes (self-explanation).

A direction v has no source prompt: it is written, times a scale s, over the residual stream at the placeholder
``X`` of an explanation prompt (Kharlapenko, Nanda, Conmy et al. 2024, "Self-explaining SAE features": 'What is
the meaning of the word "X"? ... The meaning of the word "X" is "'), and the model's continuation is read as
its description. Each (vector, scale) is one source-less patchscope (``Target(writes=(Write(value=s·v),))``),
and all of them are rows of one batched run: the prompt's prefix before the first ``X`` is computed once.

The scale decides the quality: too small and the model ignores v, too large and it babbles. Two signals,
measured per (vector, scale) in a second, prefill-only pass over the same prompt with the same writes
(:func:`~patchscopes.engine.capture_states` with ``writes``; generation does not change them), choose one:

- **self-similarity**: the cosine between v and the state at the placeholder positions at a later layer
  (``signal_layer``, default the last), averaged over the placeholders: how much of the injected direction the
  model's later states keep;
- **entropy**: the entropy (nats) of the next-token distribution at the prompt's last position, which is the
  distribution of the explanation's first token.

:func:`choose_scales` takes, per vector, the scale with the highest ``self-similarity − entropy`` after each
signal is min-max normalized over that vector's scales (ties: the smaller scale). Beside the text, each vector's
logit-lens reading (its top tokens through the final norm and unembedding) is reported.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from patchscopes.engine import EMBEDDINGS, capture_states
from patchscopes.engine import Write as EngineWrite
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.presets import get_preset
from patchscopes.runner import run
from patchscopes.runs import RunOptions, run_options
from patchscopes.scope import Generate, Patchscope, Target, Write
from patchscopes.specs import Spec, parse_spec
from patchscopes.vectors import SAE, check_vectors, load_vectors

AUTO_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
"""``scales="auto"``: these multiples of the typical state norm at the layer (measured at the placeholders of
the prompt itself) are the scales tried."""

FLAT = 1e-3
"""A selection signal that varies less than this over a vector's scales (cosine, or nats) does not choose."""

SIGNAL_ROWS = 64
"""Rows of one forward of the signal pass."""

VectorsLike = torch.Tensor | SAE | str | Path
PromptLike = str | tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class ExplanationPrompt:
    """The prompt the vectors are written into.

    Attributes:
        ids: Its token ids.
        positions: The placeholder positions each vector is written at.
        name: The preset's name, or ``"custom"``.
    """

    ids: tuple[int, ...]
    positions: tuple[int, ...]
    name: str = "custom"


def explanation_prompt(model: LanguageModel, prompt: PromptLike = "self-explanation") -> ExplanationPrompt:
    """The token ids and placeholder positions of ``prompt`` for ``model``.

    Args:
        model: The model.
        prompt: A preset that builds its own prompt (``"self-explanation"``, ``"selfie"``), or ``(ids,
            positions)`` given as they are.

    Raises:
        PatchscopesError: An unknown preset, a preset without a prompt builder, or positions outside the ids.
    """
    if isinstance(prompt, str):
        preset = get_preset(prompt)
        if preset.prompt_builder is None:
            raise PatchscopesError(f"the {preset.name} preset has no placeholder prompt to write a vector into",
                                   hint="use prompt='self-explanation' or 'selfie', or give (token ids, positions)")
        ids, positions = preset.prompt_builder(model)
        return ExplanationPrompt(tuple(ids), tuple(positions), preset.name)
    ids, positions = (tuple(int(t) for t in part) for part in prompt)
    if not ids or not positions or not all(0 <= p < len(ids) for p in positions):
        raise PatchscopesError(f"the prompt's positions {positions} must be inside its {len(ids)} tokens",
                               hint="give (token ids, placeholder positions), at least one of each")
    return ExplanationPrompt(ids, positions)


def select_vectors(model: LanguageModel, vectors: VectorsLike, features: Spec | Sequence[int] | None = None,
                   *, key: str | None = None) -> tuple[torch.Tensor, list[int], SAE | None]:
    """The rows to describe, checked: ``(n, d)`` float32, their indices, and the SAE they come from (if any).

    Args:
        model: The model the vectors are written into (their width must be its hidden size).
        vectors: A tensor ``(n, d)`` or ``(d,)``, an :class:`~patchscopes.vectors.SAE` (its decoder rows), or a
            path (an SAE folder or a tensor file, :func:`~patchscopes.vectors.load_vectors`).
        features: Which rows: a spec (``"0:100"``, ``"3,7"``), a list of indices, or ``None`` for all.
        key: The tensor to take from a file holding several.

    Raises:
        PatchscopesError: A file or SAE cannot be read, an index is out of range, or a chosen vector has the wrong
            width, NaN or infinite entries, or zero length.
    """
    sae = None
    if isinstance(vectors, (str, Path)):
        vectors = load_vectors(vectors, key=key)
    if isinstance(vectors, SAE):
        sae, matrix = vectors, vectors.W_dec
        what = "SAE feature"
    else:
        matrix = torch.as_tensor(vectors)
        matrix = matrix[None] if matrix.ndim == 1 else matrix
        what = "vector"
    if matrix.ndim != 2:
        raise PatchscopesError(f"the vectors have shape {tuple(matrix.shape)}",
                               hint=f"give a matrix (n, {model.hidden_size}) or one vector ({model.hidden_size},)")
    n = matrix.shape[0]
    if features is None:
        indices = list(range(n))
    elif isinstance(features, (str, int)) and not isinstance(features, bool):
        indices = parse_spec(str(features), n, what="feature")
    else:
        indices = [int(k) for k in features]
        bad = [k for k in indices if not 0 <= k < n]
        if bad:
            raise PatchscopesError(f"feature {bad[0]} is out of range: there are {n} {what}s",
                                   hint=f"use indices in 0..{n - 1}")
        if not indices:
            raise PatchscopesError("no features chosen", hint="give at least one index")
    chosen = check_vectors(matrix[indices], model.hidden_size, what)
    return chosen, indices, sae


def typical_norm(model: LanguageModel, prompt: ExplanationPrompt, layer: int | str) -> float:
    """The mean norm of the prompt's own states at ``layer`` over its placeholder positions (the token
    embeddings' output for ``"embeddings"``): the unit of ``scales="auto"``."""
    if layer == "embeddings":
        with torch.no_grad():
            ids = torch.tensor([prompt.ids], device=model.device)
            states = model.arch.embed(ids)[0, list(prompt.positions)].float().cpu()
    else:
        states = capture_states(model, [prompt.ids], [list(prompt.positions)], [layer])[:, 0]
    return float(states.norm(dim=-1).mean())


def selection_signals(model: LanguageModel, prompt: ExplanationPrompt, layer: int | str, directions: torch.Tensor,
                      scales: torch.Tensor, signal_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-similarity and entropy of every (direction, scale), ``(n, len(scales))`` each.

    Args:
        model: The model.
        prompt: The explanation prompt.
        layer: Where the scaled directions are written (a layer index or ``"embeddings"``).
        directions: Unit vectors ``(n, d)``.
        scales: ``(n, k)``: the scales of each direction.
        signal_layer: The layer whose states at the placeholders are compared with the direction (default: the
            last).

    Returns:
        ``(self_similarity, entropy)``: the cosine of the direction with the state at ``signal_layer`` averaged
        over the placeholders, and the entropy (nats) of the next-token distribution at the last position.
    """
    last = model.num_layers - 1
    at = EMBEDDINGS if layer == "embeddings" else model.check_layer(layer, "layer")
    read = last if signal_layer is None else model.check_layer(signal_layer, "signal layer")
    n, k = scales.shape
    placeholders = list(prompt.positions)
    end = len(prompt.ids) - 1
    pairs = [(i, j) for i in range(n) for j in range(k)]
    sims, ents = torch.zeros(n, k), torch.zeros(n, k)
    for start in range(0, len(pairs), SIGNAL_ROWS):
        chunk = pairs[start: start + SIGNAL_ROWS]
        writes = [[EngineWrite(at, p, directions[i] * scales[i, j]) for p in placeholders] for i, j in chunk]
        states = capture_states(model, [prompt.ids] * len(chunk), [[*placeholders, end]] * len(chunk),
                                [read, last], writes=writes)
        per_row = states.view(len(chunk), len(placeholders) + 1, 2, -1)
        kept = per_row[:, : len(placeholders), 0]  # (rows, placeholders, d) at the signal layer
        unit = torch.stack([directions[i] for i, _ in chunk])
        sim = torch.nn.functional.cosine_similarity(kept, unit[:, None], dim=-1).mean(dim=1)
        with torch.no_grad():
            logits = model.head(per_row[:, -1, 1].to(model.device, model.dtype)).float().cpu()
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(dim=-1)
        for row, (i, j) in enumerate(chunk):
            sims[i, j], ents[i, j] = sim[row], ent[row]
    return sims, ents


def choose_scales(self_similarity: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the scale with the highest ``self-similarity − entropy``, each signal min-max
    normalized over the row; a signal that varies by less than :data:`FLAT` over the row counts 0 (rounding
    noise must not choose); ties go to the smaller scale.

    Args:
        self_similarity: ``(n, k)``.
        entropy: ``(n, k)``.

    Returns:
        ``(n,)`` indices into the scales.
    """

    def normed(x: torch.Tensor) -> torch.Tensor:
        low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        span = high - low
        return torch.where(span > FLAT, (x - low) / span.clamp_min(1e-12), torch.zeros_like(x))

    score = normed(self_similarity) - normed(entropy)
    best = score.max(dim=1, keepdim=True).values
    return (score >= best - 1e-9).float().argmax(dim=1)  # the first (smallest) scale reaching the best


def logit_lens_tokens(model: LanguageModel, directions: torch.Tensor, k: int = 5) -> list[list[str]]:
    """Each direction's top ``k`` tokens through the final norm and unembedding (its logit-lens reading)."""
    with torch.no_grad():
        logits = model.head(directions.to(model.device, model.dtype)).float().cpu()
    ids = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()
    return [model.token_strings(row) for row in ids]


def describe_vectors(
    model: LanguageModel,
    vectors: VectorsLike,
    *,
    layer: int | str | None = None,
    scales: str | Sequence[float] = "auto",
    prompt: PromptLike = "self-explanation",
    features: Spec | Sequence[int] | None = None,
    max_new_tokens: int = 16,
    stop: Sequence[str] = (),
    select: str | float = "auto",
    signal_layer: int | None = None,
    signals: bool = True,
    top_k: int = 5,
    key: str | None = None,
    options: RunOptions | None = None,
) -> pd.DataFrame:
    """Describe directions in words: each vector × scale written at the prompt's placeholders, then generation.

    Every vector is normalized to unit length and written (replacing the state) at ``layer`` at each
    placeholder, times each scale; each (vector, scale) is one row of one batched run. Two signals measured in
    a prefill-only pass with the same writes choose a scale per vector (module docstring).

    Args:
        model: The model.
        vectors: A tensor ``(n, d)`` or ``(d,)``, an :class:`~patchscopes.vectors.SAE` (its decoder rows), or a
            path (an SAELens SAE folder, a ``.safetensors``/``.pt``/``.npy`` file).
        layer: Where to write: a layer index or ``"embeddings"``; default the SAE's own layer (from its
            ``hook_name``), required otherwise.
        scales: ``"auto"`` (:data:`AUTO_FACTORS` × the layer's typical state norm at the placeholders) or the
            norms to write (the vector is unit length first).
        prompt: ``"self-explanation"`` (the default), ``"selfie"``, or ``(token ids, placeholder positions)``.
        features: Which rows to describe (a spec ``"0:100"`` or indices); default all.
        max_new_tokens: Tokens generated per (vector, scale).
        stop: Strings that end a generation (e.g. ``('"',)`` to keep the quoted explanation only).
        select: ``"auto"`` (the signals choose per vector) or a number: the scale nearest it for every vector.
        signal_layer: The layer of the self-similarity signal (default: the last).
        signals: Measure the two signals (a second, prefill-only pass); without them (``NaN`` in the frame) the
            scale must be chosen by ``select=`` a number.
        top_k: Tokens of the logit-lens reading.
        key: The tensor to take from a file that holds several.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress, executor,
            run directory).

    Returns:
        One row per (vector, scale): ``feature`` (the row index), ``scale``, ``text``, ``self_similarity``,
        ``entropy``, ``chosen`` (this row's scale is the vector's chosen one), ``chosen_scale``, ``chosen_text``,
        ``logit_lens`` (the direction's top tokens, one string), ``norm`` (the vector's norm before
        normalizing), ``layer`` and ``prompt``. ``df[df.chosen]`` has one row per vector.

    Raises:
        PatchscopesError: Bad vectors (wrong width, NaN/inf, zero), an SAE folder missing a tensor, feature
            indices out of range, no layer, bad scales or an unknown prompt — before anything runs.
    """
    options = run_options(options, {}, "describe_vectors")
    chosen_rows, indices, sae = select_vectors(model, vectors, features, key=key)
    if layer is None:
        layer = sae.layer if sae is not None else None
        if layer is None:
            raise PatchscopesError("no layer to write the vectors at",
                                   hint="pass layer=L (--layer L), or give an SAE whose cfg.json names its hook")
    if layer != "embeddings":
        layer = model.check_layer(layer, "layer")
    if max_new_tokens < 1:
        raise PatchscopesError(f"max_new_tokens must be at least 1, got {max_new_tokens}", hint="e.g. 16")
    target = None
    if select != "auto":
        try:
            target = float(select)
        except (TypeError, ValueError) as err:
            raise PatchscopesError(f"select must be 'auto' or a scale, got {select!r}",
                                   hint="'auto' lets the signals choose; a number picks the nearest scale") from err
    elif not signals:
        raise PatchscopesError("select='auto' needs the selection signals", hint="pass signals=True or select=SCALE")
    where = explanation_prompt(model, prompt)
    norms = chosen_rows.norm(dim=1)
    directions = chosen_rows / norms[:, None]
    grid = scale_grid(model, where, layer, scales)
    n, k = len(indices), len(grid)
    scale_matrix = torch.tensor(grid, dtype=torch.float32).expand(n, k)
    readout = Generate(max_new_tokens=max_new_tokens, stop=tuple(stop), top_tokens=1)
    scopes = [Patchscope(None, Target(where.ids, 0, writes=tuple(
        Write(layer, p, directions[i] * float(s)) for p in where.positions)), readout)
        for i in range(n) for s in grid]
    results = run(scopes, model, **options.run_kwargs())
    if signals:
        sims, ents = selection_signals(model, where, layer, directions, scale_matrix, signal_layer)
    else:
        sims = ents = torch.full((n, k), float("nan"))
    if target is None:
        pick = choose_scales(sims, ents).tolist()
    else:
        nearest = min(range(k), key=lambda j: abs(grid[j] - target))
        pick = [nearest] * n
    lens = logit_lens_tokens(model, directions, top_k)
    rows = []
    for i, feature in enumerate(indices):
        texts = [results[i * k + j].readings.generated_text or "" for j in range(k)]
        for j, s in enumerate(grid):
            rows.append({
                "feature": feature, "scale": float(s), "text": texts[j], "self_similarity": float(sims[i, j]),
                "entropy": float(ents[i, j]), "chosen": j == pick[i], "chosen_scale": float(grid[pick[i]]),
                "chosen_text": texts[pick[i]], "logit_lens": " ".join(repr(t) for t in lens[i]),
                "norm": float(norms[i]), "layer": str(layer), "prompt": where.name,
            })
    return pd.DataFrame(rows)


def scale_grid(model: LanguageModel, prompt: ExplanationPrompt, layer: int | str,
               scales: str | Sequence[float]) -> list[float]:
    """The scales tried: ``"auto"``'s multiples of the layer's typical norm, or the given ones, checked.

    Raises:
        PatchscopesError: No scales, or one that is not a positive finite number.
    """
    if isinstance(scales, str):
        if scales != "auto":
            raise PatchscopesError(f"scales must be 'auto' or a list of numbers, got {scales!r}",
                                   hint="e.g. scales='auto' or scales=[4, 8, 16]")
        unit = typical_norm(model, prompt, layer)
        return [round(f * unit, 4) for f in AUTO_FACTORS]
    grid = [float(s) for s in scales]
    if not grid:
        raise PatchscopesError("no scales given", hint="give at least one scale, or scales='auto'")
    bad = [s for s in grid if not (s > 0 and s < float("inf"))]
    if bad:
        raise PatchscopesError(f"scale {bad[0]} is not a positive finite number",
                               hint="scales are norms: e.g. [4, 8, 16]")
    return grid


def vectors_html(df: pd.DataFrame, title: str = "Vectors described") -> str:
    """A standalone HTML page of :func:`describe_vectors`'s frame: per feature, its logit-lens reading and a table
    of the text at each scale with both signals, the chosen scale marked (★, highlighted)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left;vertical-align:top}tr.chosen{background:#fff3c4;font-weight:600}.num{text-align:right;"
        "font-variant-numeric:tabular-nums}.lens{color:#555;font-family:monospace}",
        f"</style></head><body><h1>{html.escape(title)}</h1>",
        "<p>Each row writes the unit direction times the scale at the prompt's placeholders. Self-similarity: "
        "cosine of the direction with the later state at the placeholders; entropy: of the first explanation "
        "token's distribution (nats). ★ marks the chosen scale.</p>",
    ]
    for feature, group in df.groupby("feature", sort=False):
        first = group.iloc[0]
        parts.append(f"<h2>feature {int(feature)}</h2><p class='lens'>logit lens: {html.escape(first['logit_lens'])}"
                     f" · norm {first['norm']:.3g} · layer {html.escape(str(first['layer']))}</p>")
        parts.append("<table><tr><th></th><th>scale</th><th>text</th><th>self-similarity</th><th>entropy</th></tr>")
        for _, row in group.iterrows():
            mark = "★" if row["chosen"] else ""
            parts.append(f"<tr class='{'chosen' if row['chosen'] else ''}'><td>{mark}</td>"
                         f"<td class='num'>{row['scale']:.4g}</td><td>{html.escape(row['text'])}</td>"
                         f"<td class='num'>{row['self_similarity']:.3f}</td><td class='num'>{row['entropy']:.3f}</td>"
                         "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
