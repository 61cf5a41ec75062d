"""Experiment 4 of the paper: reading a source model A's hidden states through a target model B.

**Next-token prediction** (the paper's code, ``patch_cross_model.ipynb``). An evaluation text is read by
both models; one aligned position pair (i, j) is drawn per window (both models have read the same text there,
see :mod:`patchscopes.lenses.cross_model`). A's state h at (l, i) is mapped by the fitted affine f_{l→l*} and written
over B's state at (l*, j) while B reads the same text (T = S, i* = j); B's next-token distribution at j is
read. Methods:

- ``cross-model``: that patch, for every (l, l*) pair of the map.
- ``cross-model-identity-prompt`` (optional): f(h) patched into B's token-identity prompt
  ``"cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?"`` at its last token, l*, instead of T = S.
- ``token-identity``: the same-model result of Experiment 1 for comparison: A's h at (l, i) patched into A's
  own token-identity prompt at l* = l.
- ``target-own``: B's own unpatched prediction at j. With T = S every patched run still reads the whole
  prefix through B, so this is the level a map that only reproduced B's own state would reach.

**Precision@1** compares the patched top token with A's own final top token at i. A and B have different
vocabularies, so the tokens are compared as decoded text: ``correct`` is exact equality of the two tokens'
text (leading spaces included), ``correct_stripped`` equality after stripping surrounding whitespace (where A's
token is not whitespace only). For ``token-identity`` (same model) the ids are compared, as in Experiment 1.
**Surprisal** is −log p_A(t̃) in nats under A's final distribution at i, where t̃ is the first token of A's
encoding of B's predicted text (the whole text when it is one token of A, as it mostly is; NaN when it encodes
to nothing).

**Entity description** across models: A reads the entity's name; f_{l→l*}(h) is patched into B's description
prompt at ``x``, l*; scored as in Experiment 3 (:mod:`patchscopes.experiments.entities`), next to A's own
same-model description at l* = l.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from patchscopes.data.entities import Entity
from patchscopes.data.text import Document
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.entities import description_samples, summarize_descriptions
from patchscopes.lenses import AlignedWindow, CrossModelMap, align_windows
from patchscopes.models import LanguageModel
from patchscopes.presets import TOKEN_IDENTITY_PROMPT
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.runs.options import RUN_OPTION_NAMES
from patchscopes.scope import NextToken, Patchscope, Source, Target
from patchscopes.specs import Spec, parse_spec

CROSS_METHODS = ("cross-model", "cross-model-identity-prompt", "token-identity", "target-own")
DEFAULT_METHODS = ("cross-model", "token-identity", "target-own")
SAMPLE_COLUMNS = ["method", "layer", "target_layer", "sample", "document", "source_position", "target_position",
                  "source_token", "predicted_token", "correct", "correct_stripped", "surprisal", "same_as_target_own"]
SUMMARY_COLUMNS = ["method", "layer", "target_layer", "precision_at_1", "precision_at_1_stripped", "surprisal",
                   "same_as_target_own", "n"]


def _pairs(cmap: CrossModelMap, source: LanguageModel, target: LanguageModel, layers: Spec | None,
           target_layers: Spec | None) -> list[tuple[int, int]]:
    src = cmap.layers if layers is None else parse_spec(layers, source.num_layers, what="source layer")
    tgt = cmap.target_layers if target_layers is None else parse_spec(target_layers, target.num_layers,
                                                                        what="target layer")
    pairs = [(a, b) for a in src for b in tgt]
    for a, b in pairs:
        cmap.mapping(a, b)  # raises with the pairs it has
    return pairs


def sample_aligned(
    windows: Sequence[AlignedWindow], samples: int, seed: int = 0
) -> list[tuple[AlignedWindow, int, int]]:
    """Draw ``samples`` windows at random (seeded) and one aligned pair ``(i, j)`` in each."""
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=g).tolist()[:samples]
    out = []
    for index in order:
        w = windows[index]
        i, j = w.pairs[int(torch.randint(0, len(w.pairs), (1,), generator=g))]
        out.append((w, i, j))
    return out


def cross_model_samples(
    source: LanguageModel,
    target: LanguageModel,
    cmap: CrossModelMap,
    documents: Sequence[Document | str],
    *,
    samples: int = 200,
    seed: int = 0,
    layers: Spec | None = None,
    target_layers: Spec | None = None,
    methods: Sequence[str] | None = None,
    max_tokens: int = 64,
    batch_samples: int = 32,
    options: RunOptions | None = None,
    **legacy: Any,
) -> pd.DataFrame:
    """Run the cross-model next-token experiment; one row per (method, l, l*, sample).

    Args:
        source: Model A (the map's source).
        target: Model B (the map's target).
        cmap: The fitted maps.
        documents: The evaluation documents; those the map was fitted on are left out.
        samples: How many positions (one per window).
        seed: Seed of the windows and positions.
        layers: Source layers l (default: all the map has).
        target_layers: Target layers l* (default: all the map has).
        methods: Some of :data:`CROSS_METHODS` (default :data:`DEFAULT_METHODS`).
        max_tokens: Window length in A's tokens.
        batch_samples: Samples per call of the engine.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Returns:
        Columns :data:`SAMPLE_COLUMNS`; ``token-identity`` and ``target-own`` rows have ``target_layer`` = l and
        -1 (no layer) respectively. ``same_as_target_own`` (rows that B predicted, with ``target-own`` among
        the methods) says whether B's patched top token equals its own unpatched one at j: how often the patch
        left B's prediction as it was. ``attrs`` holds counts and settings.

    Raises:
        PatchscopesError: Models the map was not fitted between, pairs it lacks, unknown methods, or no usable
            evaluation text.
    """
    options = run_options(options, legacy, "cross_model_samples")
    store = open_run_dir(options.run_dir, command="cross_model_samples", models=[source, target], data=documents,
                         settings=settings_of(locals(), exclude=("source", "target", "documents")))
    start = time.perf_counter()
    cmap.check_models(source, target)
    names = list(DEFAULT_METHODS if methods is None else dict.fromkeys(methods))
    for m in names:
        if m not in CROSS_METHODS:
            raise PatchscopesError(f"unknown method {m!r}", hint=f"use some of {', '.join(CROSS_METHODS)}")
    if not names:
        raise PatchscopesError("no methods to evaluate", hint=f"use some of {', '.join(CROSS_METHODS)}")
    pairs = _pairs(cmap, source, target, layers, target_layers)
    src_layers = sorted({a for a, _ in pairs})
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    keep = cmap.overlaps([d.digest for d in docs])
    excluded = sum(keep)
    docs = [d for d, fitted in zip(docs, keep) if not fitted]
    windows = align_windows(source, target, docs, max_tokens=max_tokens)
    chosen = sample_aligned(windows, samples, seed) if windows else []
    if not chosen:
        raise PatchscopesError("no evaluation text with a position both models have read alike",
                               hint="give more text (documents the map was fitted on are left out)")
    a_last, b_last = source.num_layers - 1, target.num_layers - 1
    rows: list[tuple] = []
    bar = tqdm(total=len(chosen), desc="cross-model", unit="sample", disable=not options.progress)
    try:
        for first in range(0, len(chosen), batch_samples):
            part = list(range(first, min(first + batch_samples, len(chosen))))
            scopes: list[Patchscope] = []
            keys: list[tuple[str, int, int, int]] = []
            finals: dict[int, int] = {}
            for s in part:
                w, i, j = chosen[s]
                a_ids, b_ids = w.source_ids[: i + 1], w.target_ids[: j + 1]
                finals[s] = len(scopes)
                scopes.append(Patchscope(Source(a_ids, a_last, -1, model=source), Target(a_ids, a_last, -1),
                                         NextToken(top_k=1, full_logits=True)))
                keys.append(("final", a_last, a_last, s))
                if "target-own" in names:
                    scopes.append(Patchscope(Source(b_ids, b_last, -1, model=target), Target(b_ids, b_last, -1),
                                             NextToken(top_k=1)))
                    keys.append(("target-own", -1, -1, s))
                for layer, target_layer in pairs:
                    f = cmap.mapping(layer, target_layer)
                    if "cross-model" in names:
                        scopes.append(Patchscope(Source(a_ids, layer, -1, model=source),
                                                 Target(b_ids, target_layer, -1, mapping=f, model=target),
                                                 NextToken(top_k=1)))
                        keys.append(("cross-model", layer, target_layer, s))
                    if "cross-model-identity-prompt" in names:
                        scopes.append(Patchscope(Source(a_ids, layer, -1, model=source),
                                                 Target(TOKEN_IDENTITY_PROMPT, target_layer, -1, mapping=f,
                                                        model=target), NextToken(top_k=1)))
                        keys.append(("cross-model-identity-prompt", layer, target_layer, s))
                if "token-identity" in names:
                    for layer in src_layers:
                        scopes.append(Patchscope(Source(a_ids, layer, -1, model=source),
                                                 Target(TOKEN_IDENTITY_PROMPT, layer, -1), NextToken(top_k=1)))
                        keys.append(("token-identity", layer, layer, s))
            results = run(scopes, source, **options.with_(run_dir=store, progress=False).run_kwargs())
            own_text: dict[int, str] = {}
            logprobs = {s: torch.log_softmax(results[k].readings.logits.float(), dim=-1) for s, k in finals.items()}
            for (method, layer, target_layer, s), result in zip(keys, results):
                if method == "final":
                    continue
                w, i, j = chosen[s]
                lp = logprobs[s]
                final_id = int(lp.argmax())
                final_text = source.token_strings([final_id])[0]
                predicted_id = int(result.readings.top_token_ids[0])
                if method == "token-identity":
                    predicted_text = source.token_strings([predicted_id])[0]
                    correct = predicted_id == final_id
                    surprisal = float(-lp[predicted_id])
                else:
                    predicted_text = target.token_strings([predicted_id])[0]
                    correct = predicted_text == final_text
                    surprisal = text_surprisal(source, lp, predicted_text)
                stripped = (predicted_text.strip() == final_text.strip()) if final_text.strip() else correct
                if method == "target-own":
                    own_text[s] = predicted_text
                same_as_own = (None if method == "token-identity" or s not in own_text
                               else predicted_text == own_text[s])
                rows.append((method, layer, target_layer, s, w.digest[:12], i, j, final_text, predicted_text,
                             bool(correct), bool(stripped or correct), surprisal, same_as_own))
            bar.update(len(part))
    finally:
        bar.close()
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    order = {m: k for k, m in enumerate(CROSS_METHODS)}
    frame = frame.sort_values(["method", "layer", "target_layer", "sample"],
                              key=lambda c: c.map(order) if c.name == "method" else c, kind="stable")
    frame = frame.reset_index(drop=True)
    frame.attrs.update(
        model=source.name, target_model=target.name, methods=names, pairs=pairs, samples=len(chosen),
        requested=samples, documents=len(docs), windows=len(windows), excluded_fit_documents=excluded, seed=seed,
        max_tokens=max_tokens, engine=options.engine, seconds=round(time.perf_counter() - start, 1),
    )
    return frame


def text_surprisal(model: LanguageModel, logprobs: torch.Tensor, text: str) -> float:
    """−log p(t) under ``logprobs`` for t the first token of ``model``'s encoding of ``text`` (NaN if none)."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    if not ids:
        return math.nan
    return float(-logprobs[int(ids[0])])


def summarize_cross_model(samples: pd.DataFrame) -> pd.DataFrame:
    """Per method and (l, l*): Precision@1 (exact and whitespace-stripped), mean surprisal (nats), the share of
    patched predictions equal to B's own unpatched one, and n."""
    records = []
    for (method, layer, target_layer), cell in samples.groupby(["method", "layer", "target_layer"], sort=False):
        records.append({
            "method": method, "layer": int(layer), "target_layer": int(target_layer),
            "precision_at_1": float(cell["correct"].mean()),
            "precision_at_1_stripped": float(cell["correct_stripped"].mean()),
            "surprisal": float(cell["surprisal"].mean()) if cell["surprisal"].notna().any() else math.nan,
            "same_as_target_own": (float(cell["same_as_target_own"].dropna().astype(bool).mean())
                                   if cell["same_as_target_own"].notna().any() else math.nan),
            "n": len(cell),
        })
    frame = pd.DataFrame(records, columns=SUMMARY_COLUMNS)
    frame.attrs.update(samples.attrs)
    return frame


def cross_model_descriptions(
    source: LanguageModel,
    target: LanguageModel,
    cmap: CrossModelMap,
    entities: Sequence[Entity],
    *,
    layers: Spec | None = None,
    target_layers: Spec | None = None,
    same_model: bool = True,
    options: RunOptions | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Entity description across models: A reads the name, f_{l→l*}(h) goes into B's description prompt.

    Args:
        source: Model A.
        target: Model B.
        cmap: The fitted maps.
        entities: The entities.
        layers: Source layers l (default: all the map has).
        target_layers: Target layers l* (default: all the map has).
        same_model: Also describe with A alone at l* = l (``mapping = "identity"`` rows), for comparison.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`; a ``run_dir`` path is opened once,
            for both calls of :func:`~patchscopes.experiments.entities.description_samples`).
        **kwargs: The other arguments of :func:`~patchscopes.experiments.entities.description_samples`.

    Returns:
        One row per (entity, pair) with the columns of
        :data:`~patchscopes.experiments.entities.SAMPLE_COLUMNS` and ``method`` (``cross-model`` or
        ``same-model``).
    """
    legacy = {k: kwargs.pop(k) for k in RUN_OPTION_NAMES if k in kwargs}
    options = run_options(options, legacy, "cross_model_descriptions")
    cmap.check_models(source, target)
    store = open_run_dir(options.run_dir, command="cross_model_descriptions", models=[source, target], data=entities,
                         settings=settings_of({**locals(), **kwargs}, exclude=("source", "target", "entities",
                                                                               "kwargs")))
    options = options.with_(run_dir=store)
    pairs = _pairs(cmap, source, target, layers, target_layers)
    cross = description_samples(source, entities, [(a, b, cmap.mapping(a, b)) for a, b in pairs],
                                target_model=target, options=options, **kwargs)
    cross.insert(0, "method", "cross-model")
    frames = [cross]
    if same_model:
        src_layers = sorted({a for a, _ in pairs})
        if kwargs.get("reference") == "self":
            kwargs = {**kwargs, "reference": "file"}
            # A's own scores are against the same references as the cross-model rows: B's self-descriptions.
            refs = dict(zip(cross["entity"], cross["reference"]))
            entities = [Entity(e.name, refs.get(e.name), e.popularity, e.group, e.origin) for e in entities]
        same = description_samples(source, entities, [(a, a, None) for a in src_layers], options=options, **kwargs)
        same.insert(0, "method", "same-model")
        frames.append(same)
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs.update(cross.attrs)
    return frame


def summarize_cross_descriptions(samples: pd.DataFrame) -> pd.DataFrame:
    """:func:`~patchscopes.experiments.entities.summarize_descriptions` per method (``cross-model``,
    ``same-model``), with a ``method`` column first."""
    frames = []
    for method, part in samples.groupby("method", sort=False):
        summary = summarize_descriptions(part)
        summary.insert(0, "method", method)
        frames.append(summary)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame.attrs.update(samples.attrs)
    return frame


def cross_model_figure(summary: pd.DataFrame, *, entity_summary: pd.DataFrame | None = None,
                       title: str | None = None):
    """Heatmaps of cross-model Precision@1 and surprisal over (l, l*), a panel comparing the best l* per l with
    the same-model token identity and B's own agreement with A, and (with ``entity_summary``) a heatmap of the
    cross-model RougeL of entity descriptions.

    Returns:
        A plotly figure (save it with :func:`patchscopes.plots.save_figure`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cross = summary[summary["method"] == "cross-model"]
    panels = ["Precision@1, A's state read through B (↑)", "Surprisal under A, nats (↓)", "Per source layer l"]
    has_entities = entity_summary is not None and len(entity_summary) and entity_summary["rougeL"].notna().any()
    if has_entities:
        panels.append("Entity description RougeL (↑)")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.07)

    def heat(frame: pd.DataFrame, value: str, col: int, scale: str, zmin=None, zmax=None, fmt=".2f") -> None:
        grid = frame.pivot_table(index="layer", columns="target_layer", values=value, aggfunc="mean")
        fig.add_trace(go.Heatmap(
            z=grid.values, x=[str(c) for c in grid.columns], y=[str(r) for r in grid.index], colorscale=scale,
            zmin=zmin, zmax=zmax, text=[[format(v, fmt) if v == v else "" for v in row] for row in grid.values],
            texttemplate="%{text}", showscale=False,
            hovertemplate=f"l %{{y}} → l* %{{x}}<br>{value} %{{z:{fmt}}}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="target layer l*", type="category", row=1, col=col)
        fig.update_yaxes(title_text="source layer l", type="category", row=1, col=col)

    if len(cross):
        heat(cross, "precision_at_1", 1, "Viridis", 0, 1)
        heat(cross, "surprisal", 2, "Viridis_r")
        best = cross.groupby("layer")["precision_at_1"].max()
        fig.add_trace(go.Scatter(x=best.index, y=best.values, mode="lines+markers", name="cross-model, best l*",
                                 line=dict(color="#2ca02c", width=2)), row=1, col=3)
    ti = summary[summary["method"] == "token-identity"].sort_values("layer")
    if len(ti):
        fig.add_trace(go.Scatter(x=ti["layer"], y=ti["precision_at_1"], mode="lines+markers",
                                 name="same model A, token identity (l* = l)", line=dict(color="#d62728", width=2)),
                      row=1, col=3)
    own = summary[summary["method"] == "target-own"]
    if len(own):
        layers = sorted(summary[summary["layer"] >= 0]["layer"].unique())
        value = float(own["precision_at_1"].iloc[0])
        fig.add_trace(go.Scatter(x=layers, y=[value] * len(layers), mode="lines", name="B's own prediction vs A's",
                                 line=dict(color="#555555", dash="dash")), row=1, col=3)
    idp = summary[summary["method"] == "cross-model-identity-prompt"]
    if len(idp):
        best = idp.groupby("layer")["precision_at_1"].max()
        fig.add_trace(go.Scatter(x=best.index, y=best.values, mode="lines+markers",
                                 name="cross-model into B's identity prompt, best l*",
                                 line=dict(color="#9467bd", width=2)), row=1, col=3)
    fig.update_xaxes(title_text="source layer l", row=1, col=3)
    fig.update_yaxes(title_text="Precision@1", range=[0, 1.02], row=1, col=3)
    if has_entities:
        ent = entity_summary[entity_summary["group"] == "all"] if "all" in set(entity_summary["group"]) \
            else entity_summary
        ent = ent[ent["method"] == "cross-model"] if "method" in ent.columns else ent
        heat(ent, "rougeL", 4, "Viridis", 0, None)
    attrs = summary.attrs
    if title is None:
        title = (f"Cross-model patching · {attrs.get('model', '')} → {attrs.get('target_model', '')} · "
                 f"{attrs.get('samples', '')} samples")
    fig.update_layout(title=title, template="plotly_white", width=430 * len(panels), height=480,
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0.5, xanchor="center"),
                      margin=dict(l=60, r=20, t=70, b=110))
    return fig
