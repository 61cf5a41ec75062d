"""The future lens of Pal et al. (2023): how well one hidden state h_l(i) tells the tokens the model will
produce N = 0..3 positions later, by three methods (:mod:`patchscopes.lenses.future`), measured as the paper
does: Precision@k per layer and offset, the share of positions where the model's own token g_N is among the
method's k most likely tokens.

- ``linear``: the lens's affine map (h_l(i) → the last layer's state at i + N), decoded by the head;
- ``fixed``: a patchscope through :func:`patchscopes.run`: h_l(i) written at l* = l over the last token of the
  fixed prompt (:data:`~patchscopes.lenses.future.FIXED_PROMPT`), followed by g_0 ... g_{N-1} as token ids;
- ``learned``: the lens's soft prompt of layer l (a :class:`~patchscopes.soft_prompt.SoftPrompt` target) in
  place of the fixed prompt, through :func:`patchscopes.run` too.

Evaluation positions come from the documents' evaluation part (the split ``fit-lens`` uses); documents the
lens was fitted on are left out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from patchscopes.data.text import Document
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.future import (
    DEFAULT_OFFSETS,
    FIXED_PROMPT,
    FutureLens,
    future_states,
    sample_future_positions,
)
from patchscopes.models import LanguageModel
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import NextToken, Patchscope, Source, Target

FUTURE_METHODS = ("linear", "fixed", "learned")
METHOD_LABELS = {"linear": "linear model approximation", "fixed": "fixed prompt", "learned": "learned prompt"}
RECORD_COLUMNS = ["method", "layer", "offset", "precision_at_1", "precision_at_k", "k", "n"]


@dataclass
class FutureResults:
    """Per sample, method, layer and offset: whether the model's token was the top one and among the top k.

    Attributes:
        hits: ``method, layer, offset, sample, top1, topk``.
        attrs: Settings and timings.
    """

    hits: pd.DataFrame
    attrs: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Precision@1 and @k per (method, layer, offset): columns :data:`RECORD_COLUMNS`."""
        if self.hits.empty:
            return pd.DataFrame(columns=RECORD_COLUMNS)
        out = self.hits.groupby(["method", "layer", "offset"], sort=False).agg(
            precision_at_1=("top1", "mean"), precision_at_k=("topk", "mean"), n=("top1", "size")).reset_index()
        out["k"] = self.attrs.get("top_k")
        out["precision_at_1"] = out["precision_at_1"].astype(float)
        out["precision_at_k"] = out["precision_at_k"].astype(float)
        return out[RECORD_COLUMNS]

    def records(self) -> list[dict]:
        """JSON-ready records, one per (method, layer, offset)."""
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in self.summary().to_dict(orient="records")]


def evaluate_future(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    lens: FutureLens | None = None,
    layers: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    samples: int = 200,
    top_k: int = 5,
    fixed_prompt: str = FIXED_PROMPT,
    max_tokens: int = 64,
    seed: int = 1,
    batch_size: int = 32,
    options: RunOptions | None = None,
    **legacy: Any,
) -> FutureResults:
    """Evaluate the future lens's methods on positions of ``documents``.

    Args:
        model: The model.
        documents: Evaluation documents (those the lens was fitted on are left out).
        lens: The fitted lens (needed by ``linear`` and ``learned``).
        layers: Source layers (default: the lens's, else every third layer).
        offsets: Offsets N (default: the lens's, else 0..3).
        methods: Some of :data:`FUTURE_METHODS` (default: those the lens allows).
        samples: Positions to evaluate.
        top_k: k of Precision@k (Precision@1 is always reported).
        fixed_prompt: The generic prompt of the fixed method.
        max_tokens: Window length of the documents in tokens.
        seed: Seed of the positions (other than the fit's default, 0).
        batch_size: Samples per forward of the hidden states and the learned prompt.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Raises:
        PatchscopesError: Bad options; a method the lens cannot serve; offsets beyond the text window; a run
            directory of another run.
    """
    options = run_options(options, legacy, "evaluate_future")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="evaluate_future", models=[model], data=documents,
                         settings=settings_of(locals(), exclude=("model", "documents")))
    start = time.perf_counter()
    offsets = sorted(set(offsets if offsets is not None else lens.offsets if lens is not None else DEFAULT_OFFSETS))
    if not offsets or offsets[0] < 0:
        raise PatchscopesError("give non-negative offsets", hint="e.g. --offsets 0:4")
    if offsets[-1] >= max_tokens:
        raise PatchscopesError(f"offset {offsets[-1]} is beyond the text windows of {max_tokens} tokens",
                               hint="use offsets below the window length, e.g. --offsets 0:4")
    if lens is not None:
        lens.check_model(model)
    if methods is None:
        methods = ["linear", "fixed", *(["learned"] if lens is not None and lens.prompts else [])] if lens else [
            "fixed"]
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in FUTURE_METHODS]
    if unknown or not methods:
        raise PatchscopesError(f"unknown method(s) {', '.join(unknown) or '(none)'}",
                               hint=f"use some of {', '.join(FUTURE_METHODS)}")
    if layers is None:
        layers = lens.layers if lens is not None else list(range(0, model.num_layers, 3))
    layers = sorted({model.check_layer(x) for x in layers})
    if ("linear" in methods or "learned" in methods) and lens is None:
        raise PatchscopesError("the linear and learned methods need a fitted lens",
                               hint="fit one with `patchscopes fit-future-lens ... --out DIR` and pass --lens DIR")
    if lens is not None:
        _check_lens_covers(lens, methods, layers, offsets)
    if top_k < 1:
        raise PatchscopesError(f"top_k must be at least 1, got {top_k}")
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    if lens is not None:
        docs = [d for d, seen in zip(docs, lens.overlaps([d.digest for d in docs])) if not seen]
        if not docs:
            raise PatchscopesError("every evaluation document was used to fit the lens",
                                   hint="evaluate on other text, or on the evaluation part of the same files")
    data = sample_future_positions(model, docs, samples=samples, max_offset=offsets[-1], max_tokens=max_tokens,
                                   seed=seed, batch_size=batch_size, progress=progress)
    n = len(data)
    labels = torch.tensor([list(c) for c in data.continuations])  # (n, M)
    rows: list[tuple] = []

    def add(method: str, layer: int, offset: int, topk_ids: torch.Tensor) -> None:
        gold = labels[:, offset]
        top1 = (topk_ids[:, 0] == gold).tolist()
        topk = (topk_ids == gold[:, None]).any(-1).tolist()
        rows.extend((method, layer, offset, s, a, b) for s, (a, b) in enumerate(zip(top1, topk)))

    if "linear" in methods:
        sources, _ = future_states(model, data, layers, offsets[-1], batch_size=batch_size, progress=progress)
        with torch.no_grad():
            for k, layer in enumerate(layers):
                for offset in offsets:
                    mapped = lens.linear[(layer, offset)](sources[:, k])  # type: ignore[union-attr]
                    add("linear", layer, offset, model.head(mapped.to(model.dtype)).float().topk(top_k, -1).indices)
    if "fixed" in methods:
        prompt_ids = model.encode(fixed_prompt)
        scopes = [Patchscope(Source(data.prefixes[s], layer, -1),
                             Target(tuple(prompt_ids) + data.continuations[s][:offset], layer, len(prompt_ids) - 1),
                             NextToken(top_k=top_k))
                  for layer in layers for offset in offsets for s in range(n)]
        results = run(scopes, model, **options.with_(run_dir=store).run_kwargs())
        k = 0
        for layer in layers:
            for offset in offsets:
                ids = torch.tensor([r.readings.top_token_ids[:top_k] for r in results[k: k + n]])
                add("fixed", layer, offset, ids)
                k += n
    if "learned" in methods:
        for layer in layers:
            soft = lens.soft_prompt(layer)  # type: ignore[union-attr]
            position = soft.last_vector_position(model)
            scopes = [Patchscope(Source(data.prefixes[s], layer, -1),
                                 Target(soft.with_after(data.continuations[s][:offset]), layer, position),
                                 NextToken(top_k=top_k))
                      for offset in offsets for s in range(n)]
            results = run(scopes, model, **options.with_(run_dir=store).run_kwargs())
            for j, offset in enumerate(offsets):
                add("learned", layer, offset,
                    torch.tensor([r.readings.top_token_ids[:top_k] for r in results[j * n: (j + 1) * n]]))
    hits = pd.DataFrame(rows, columns=["method", "layer", "offset", "sample", "top1", "topk"])
    attrs = dict(model=model.name, layers=layers, offsets=offsets, methods=methods, samples=n, top_k=top_k,
                 fixed_prompt=fixed_prompt, engine=options.engine, seed=seed, documents=len({*data.digests}),
                 seconds=round(time.perf_counter() - start, 1))
    return FutureResults(hits, attrs)


def _check_lens_covers(lens: FutureLens, methods: Sequence[str], layers: Sequence[int], offsets: Sequence[int]):
    if "linear" in methods:
        missing = [(x, o) for x in layers for o in offsets if (x, o) not in lens.linear]
        if missing:
            raise PatchscopesError(
                f"the future lens has no linear map for layer {missing[0][0]}, offset {missing[0][1]}",
                hint=f"it was fitted for layers {lens.layers} and offsets {lens.offsets}")
    if "learned" in methods:
        missing_layers = [x for x in layers if x not in lens.prompts]
        if missing_layers:
            raise PatchscopesError(f"the future lens has no learned prompt for layer {missing_layers[0]}",
                                   hint=f"it has prompts for layers {sorted(lens.prompts)}; fit with --steps > 0")


def future_figure(results: FutureResults, *, title: str | None = None):
    """The paper's figure: Precision@1 against the source layer, one panel per offset N, a line per method.

    Returns:
        A plotly figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    summary = results.summary()
    if summary.empty:
        raise PatchscopesError("no results to plot")
    offsets = sorted(summary["offset"].unique())
    fig = make_subplots(rows=1, cols=len(offsets), shared_yaxes=True,
                        subplot_titles=[f"N = {o}" + (" (next token)" if o == 0 else "") for o in offsets])
    colors = {"linear": "#1f77b4", "fixed": "#ff7f0e", "learned": "#2ca02c"}
    for col, offset in enumerate(offsets, start=1):
        for method in FUTURE_METHODS:
            part = summary[(summary["method"] == method) & (summary["offset"] == offset)].sort_values("layer")
            if part.empty:
                continue
            fig.add_trace(go.Scatter(
                x=part["layer"], y=part["precision_at_1"], mode="lines+markers", name=METHOD_LABELS[method],
                legendgroup=method, showlegend=col == 1, line=dict(color=colors[method]),
                hovertemplate=f"{METHOD_LABELS[method]}<br>layer %{{x}}, N = {offset}<br>"
                              "Precision@1 %{y:.2f} (n=%{customdata})<extra></extra>",
                customdata=part["n"]), row=1, col=col)
    fig.update_xaxes(title_text="layer l")
    fig.update_yaxes(title_text="Precision@1", range=[0, 1], row=1, col=1)
    if title is None:
        title = (f"Future lens · {results.attrs.get('model', '')} · the token N positions ahead from h_l(i) "
                 f"(n={results.attrs.get('samples')})")
    fig.update_layout(title=title, template="plotly_white", width=max(700, 330 * len(offsets)), height=430,
                      margin=dict(l=60, r=30, t=80, b=50))
    return fig

