"""Experiment 1 of the paper: how well each layer's hidden state predicts the model's own next token.

For each sampled position i of a document, the hidden state h at every layer l is read through several
patchscopes, and the patched run's top token t̃ is compared with the source model's own final prediction
at i (REFERENCE.md, §2):

- **Precision@1**: t̃ equals the argmax of the source model's final distribution at i.
- **Surprisal**: −log p_final(t̃) in nats, where p_final is that final distribution.

Methods (each a patchscope run by :func:`patchscopes.run`):

- ``logit-lens``: l* = L-1 at the source position (T = S); the readout is head(h).
- a lens (``affine-lens``, ``tuned-lens``, see :mod:`patchscopes.lenses.base`): the same with f = the layer's map.
- ``token-identity``: the paper's prompt ``"cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?"``, patched at its
  last token, l* = l.
- ``random-demos``: the same form with k random single-token words of the vocabulary as demonstrations,
  ``demo_sets`` seeded sets, reported as the mean and standard deviation over the sets.

Each document is cut into windows of ``max_tokens`` tokens (see :mod:`patchscopes.data.text`); one random
position is drawn in each of ``samples`` random windows, and the source is the window cut just after that
position (a causal model's state at i does not depend on later tokens). The source forward runs once per
batch of windows inside the batched engine, which reads every layer at the sampled positions; the final
distribution is the logit lens at the last layer (the model's own output).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from patchscopes.data.text import Document, Window, token_windows
from patchscopes.errors import PatchscopesError
from patchscopes.lenses import Lens
from patchscopes.models import LanguageModel
from patchscopes.plots import add_band_line
from patchscopes.presets import LOGIT_LENS, TOKEN_IDENTITY_PROMPT
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import NextToken, Patchscope, Source, Target
from patchscopes.specs import parse_spec

NEXT_TOKEN_METHODS = ("logit-lens", "token-identity", "random-demos")
"""The methods that need no lens; each lens given adds its own (``affine-lens``, ``tuned-lens``)."""

SUMMARY_COLUMNS = ["method", "layer", "precision_at_1", "surprisal", "n", "precision_at_1_std", "surprisal_std",
                   "sets"]


@dataclass(frozen=True)
class Sample:
    """One sampled position: the window and the index of the token whose next token is predicted."""

    window: Window
    position: int

    @property
    def source_ids(self) -> tuple[int, ...]:
        """The window cut just after the position (later tokens cannot change the state at it)."""
        return self.window.ids[: self.position + 1]


def sample_positions(windows: Sequence[Window], samples: int, seed: int = 0) -> list[Sample]:
    """Draw ``samples`` windows at random (seeded) and one position in each.

    The position is uniform over the window's text tokens after the first (so it has some context).
    With fewer windows than ``samples``, every window is used once.
    """
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    usable = [w for w in windows if w.n_text >= 2]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(usable), generator=g).tolist()[:samples]
    out = []
    for i in order:
        w = usable[i]
        low, high = w.start + 1, len(w.ids) - 1
        pos = low + int(torch.randint(0, high - low + 1, (1,), generator=g))
        out.append(Sample(w, pos))
    return out


def random_demo_words(model: LanguageModel, k: int = 3, sets: int = 3, seed: int = 0) -> list[list[str]]:
    """``sets`` lists of ``k`` distinct random words, each a single token of the vocabulary (seeded).

    A word is an alphabetic vocabulary token that encodes back to itself alone, at the start of a line and
    (where the vocabulary allows) after a space too; lowercase words of three letters or more are preferred.
    """
    if k < 1 or sets < 1:
        raise PatchscopesError(f"the random demonstrations need k ≥ 1 and sets ≥ 1, got k={k}, sets={sets}")
    tok = model.tokenizer
    raw = tok.convert_ids_to_tokens(list(range(model.vocab_size)))
    candidates = [i for i, t in enumerate(raw) if isinstance(t, str) and t.isascii() and t.isalpha()]
    long = [i for i in candidates if len(raw[i]) >= 3 and raw[i].islower()]
    pool = long if len(long) >= 50 else candidates
    if not pool:
        raise PatchscopesError(f"{model.name}'s vocabulary has no alphabetic tokens to use as demonstrations")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g).tolist()
    strict = len(pool) >= 200

    def single(text: str) -> bool:
        return len(tok(text, add_special_tokens=False)["input_ids"]) == 1

    words: list[str] = []
    for i in order:
        word = tok.decode([pool[i]])
        if word in words or not word.isalpha() or not single(word) or (strict and not single(" " + word)):
            continue
        words.append(word)
        if len(words) == k * sets:
            break
    if len(words) < k * sets:
        raise PatchscopesError(f"found only {len(words)} single-token words for {sets} sets of {k} demonstrations",
                               hint="use a smaller --demo-k or --demo-sets")
    return [words[j * k: (j + 1) * k] for j in range(sets)]


def demo_prompt(words: Sequence[str]) -> str:
    """The token-identity prompt with these demonstrations: ``"w1 -> w1\\nw2 -> w2\\n...\\n?"``."""
    return "".join(f"{w} -> {w}\n" for w in words) + "?"


def _method_names(methods: Sequence[str] | None, lenses: Sequence[Lens]) -> list[str]:
    lens_names = [lens.name for lens in lenses]
    if len(set(lens_names)) != len(lens_names):
        raise PatchscopesError(f"two lenses of the same kind given ({', '.join(lens_names)})",
                               hint="give at most one affine and one tuned lens")
    known = [*NEXT_TOKEN_METHODS, *lens_names]
    if methods is None:
        return ["logit-lens", *lens_names, "token-identity", "random-demos"]
    out = []
    for m in methods:
        if m not in known:
            lens_hint = " (a lens method needs the lens, e.g. --lens DIR)" if m.endswith("-lens") else ""
            raise PatchscopesError(f"unknown method {m!r}{lens_hint}", hint=f"use some of {', '.join(known)}")
        if m not in out:
            out.append(m)
    if not out:
        raise PatchscopesError("no methods to evaluate", hint=f"use some of {', '.join(known)}")
    return out


def next_token_samples(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    samples: int = 2000,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    lenses: Sequence[Lens] = (),
    layers: str | int | Sequence[int] = "all",
    max_tokens: int = 64,
    demo_k: int = 3,
    demo_sets: int = 3,
    batch_samples: int = 64,
    options: RunOptions | None = None,
    **legacy: Any,
) -> pd.DataFrame:
    """Run the experiment and return one row per (method, demonstration set, layer, sample).

    Args:
        model: The model (source and target).
        documents: The evaluation documents (texts or :class:`~patchscopes.data.text.Document`). Documents a
            lens was fitted on are left out (counted in ``attrs["excluded_fit_documents"]``).
        samples: How many positions to sample (one per window).
        seed: Seed of the windows, positions and random demonstrations.
        methods: Method names (default: all, with one per lens).
        lenses: Lenses fitted on this model (``affine``/``tuned``), each a method.
        layers: Source layers (a SPEC such as ``"all"``, ``"0:30:2"``, or a list).
        max_tokens: Window length in tokens (documents are cut into windows of this size).
        demo_k: Demonstrations per random prompt.
        demo_sets: Random demonstration sets.
        batch_samples: Samples per call of the engine (bounds memory; the engine batches inside).
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Returns:
        Columns ``method, set, layer, sample, document, position, final_token_id, predicted_token_id,
        correct, surprisal`` (nats). ``attrs`` holds counts and settings.

    Raises:
        PatchscopesError: Bad options, a lens of another model, or no usable document.
    """
    options = run_options(options, legacy, "next_token_samples")
    store = open_run_dir(options.run_dir, command="next_token_samples", models=[model], data=documents,
                         settings=settings_of(locals(), exclude=("model", "documents")))
    start = time.perf_counter()
    lenses = list(lenses)
    for lens in lenses:
        lens.check_model(model)
    names = _method_names(methods, lenses)
    layer_list = parse_spec(layers, model.num_layers, what="layer")
    last = model.num_layers - 1
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    excluded = 0
    if lenses:
        keep = [not any(flags) for flags in zip(*(lens.overlaps([d.digest for d in docs]) for lens in lenses))]
        excluded = keep.count(False)
        docs = [d for d, k in zip(docs, keep) if k]
    windows, skipped = token_windows(model, docs, max_tokens=max_tokens, min_tokens=2)
    chosen = sample_positions(windows, samples, seed)
    if not chosen:
        raise PatchscopesError("no evaluation document is long enough (2 tokens or more)",
                               hint="give more or longer text")
    demo_words = random_demo_words(model, demo_k, demo_sets, seed) if "random-demos" in names else []
    targets: list[tuple[str, int, str]] = []  # (method, set, prompt) of token-identity-like methods
    if "token-identity" in names:
        targets.append(("token-identity", 0, TOKEN_IDENTITY_PROMPT))
    targets += [("random-demos", j, demo_prompt(words)) for j, words in enumerate(demo_words)]
    lens_by_name = {lens.name: lens for lens in lenses if lens.name in names}
    logit_readout = LOGIT_LENS.with_options(readout=NextToken(top_k=1))
    identity_readout = NextToken(top_k=1)

    rows: list[tuple] = []
    bar = tqdm(total=len(chosen), desc="next-token", unit="sample", disable=not options.progress)
    try:
        # Samples of similar length go together, so the source batches carry little padding.
        by_length = sorted(range(len(chosen)), key=lambda i: len(chosen[i].source_ids))
        for first in range(0, len(chosen), batch_samples):
            part = by_length[first: first + batch_samples]
            scopes: list[Patchscope] = []
            keys: list[tuple[str, int, int, int]] = []
            finals: list[int] = []
            for s_index in part:
                ids = chosen[s_index].source_ids
                finals.append(len(scopes))
                scopes.append(Patchscope(Source(ids, last, -1), Target(ids, last, -1),
                                         NextToken(top_k=1, full_logits=True, position=-1)))
                keys.append(("final", 0, last, s_index))
                for layer in layer_list:
                    source = Source(ids, layer, -1)
                    if "logit-lens" in names:
                        scopes.append(logit_readout.build(source, source_model=model))
                        keys.append(("logit-lens", 0, layer, s_index))
                    for name, lens in lens_by_name.items():
                        scopes.append(Patchscope(source, Target(ids, last, -1, mapping=lens.mapping(layer)),
                                                 NextToken(top_k=1, position=-1)))
                        keys.append((name, 0, layer, s_index))
                    for name, j, prompt in targets:
                        scopes.append(Patchscope(source, Target(prompt, layer, -1), identity_readout))
                        keys.append((name, j, layer, s_index))
            results = run(scopes, model, **options.with_(run_dir=store, progress=False).run_kwargs())
            logprobs = {}
            for offset, sample_index in zip(finals, part):
                logits = results[offset].readings.logits
                logprobs[sample_index] = torch.log_softmax(logits.float(), dim=-1)
            for key, result in zip(keys, results):
                method, j, layer, s_index = key
                if method == "final":
                    continue
                lp = logprobs[s_index]
                predicted = int(result.readings.top_token_ids[0])
                final = int(lp.argmax())
                sample = chosen[s_index]
                rows.append((method, j, layer, s_index, sample.window.digest[:12], sample.position,
                             final, predicted, predicted == final, float(-lp[predicted])))
            bar.update(len(part))
    finally:
        bar.close()
    frame = pd.DataFrame(rows, columns=["method", "set", "layer", "sample", "document", "position",
                                        "final_token_id", "predicted_token_id", "correct", "surprisal"])
    order = {m: i for i, m in enumerate(names)}
    frame = frame.sort_values(["method", "set", "layer", "sample"], key=lambda c: c.map(order) if c.name == "method"
                              else c, kind="stable").reset_index(drop=True)
    frame.attrs.update(
        model=model.name, num_layers=model.num_layers, methods=names, samples=len(chosen), requested=samples,
        documents=len(docs), windows=len(windows), skipped_short_windows=skipped, excluded_fit_documents=excluded,
        seed=seed, max_tokens=max_tokens, engine=options.engine, token_identity_prompt=TOKEN_IDENTITY_PROMPT,
        demo_prompts=[demo_prompt(w) for w in demo_words], lenses={name: lens.config.get("data", {}).get("fingerprint")
                                                                   for name, lens in lens_by_name.items()},
        seconds=round(time.perf_counter() - start, 1),
    )
    return frame


def summarize_next_token(samples: pd.DataFrame) -> pd.DataFrame:
    """Per method and layer: Precision@1, mean surprisal (nats) and n; for several demonstration sets the
    mean over sets and the standard deviation across sets (``*_std``)."""
    records = []
    for (method, layer), group in samples.groupby(["method", "layer"], sort=False):
        per_set = group.groupby("set").agg(precision=("correct", "mean"), surprisal=("surprisal", "mean"),
                                           n=("correct", "size"))
        sets = len(per_set)
        record = {
            "method": method,
            "layer": int(layer),
            "precision_at_1": float(per_set["precision"].mean()),
            "surprisal": float(per_set["surprisal"].mean()),
            "n": int(per_set["n"].iloc[0]),
            "precision_at_1_std": float(per_set["precision"].std(ddof=0)) if sets > 1 else math.nan,
            "surprisal_std": float(per_set["surprisal"].std(ddof=0)) if sets > 1 else math.nan,
            "sets": sets,
        }
        records.append(record)
    frame = pd.DataFrame(records, columns=SUMMARY_COLUMNS)
    frame.attrs.update(samples.attrs)
    return frame


def evaluate_next_token(model: LanguageModel, documents: Sequence[Document | str], **kwargs) -> pd.DataFrame:
    """Experiment 1: Precision@1 and surprisal per method and layer (see :func:`next_token_samples`).

    Returns:
        Columns ``method, layer, precision_at_1, surprisal, n, precision_at_1_std, surprisal_std, sets``
        (the ``*_std`` columns are the spread across random demonstration sets, NaN for single methods).
        ``attrs`` holds the counts (samples, documents, windows, skipped) and settings.

    Example:
        >>> from patchscopes.data.text import read_documents, split_documents
        >>> fit, evaluation = split_documents(read_documents("wiki.txt"))
        >>> table = evaluate_next_token(model, evaluation, samples=500, lenses=[lens])
    """
    return summarize_next_token(next_token_samples(model, documents, **kwargs))


_COLORS = {"logit-lens": "#1f77b4", "affine-lens": "#2ca02c", "tuned-lens": "#9467bd",
           "token-identity": "#d62728", "random-demos": "#ff7f0e"}
_LABELS = {"logit-lens": "Logit lens", "affine-lens": "Affine lens (least squares)",
           "tuned-lens": "Tuned lens (KL-trained)", "token-identity": "Token identity (paper's prompt)",
           "random-demos": "Token identity (random demos)"}


def next_token_figure(summary: pd.DataFrame, *, title: str | None = None):
    """The paper's Figure 2 for one model: Precision@1 and surprisal against the source layer, one line per
    method, with a band of ±1 standard deviation across random demonstration sets.

    Returns:
        A plotly figure (save it with :func:`patchscopes.plots.save_figure`).
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Precision@1 (↑)", "Surprisal, nats (↓)"),
                        horizontal_spacing=0.08)
    for method, group in summary.groupby("method", sort=False):
        group = group.sort_values("layer")
        color = _COLORS.get(method)
        label = _LABELS.get(method, method)
        for col, metric in ((1, "precision_at_1"), (2, "surprisal")):
            add_band_line(fig, group["layer"], group[metric], group[f"{metric}_std"], color=color, name=label,
                          group=method, metric=metric, row=1, col=col, show_legend=col == 1)
    attrs = summary.attrs
    if title is None:
        title = f"Next-token prediction from each layer · {attrs.get('model', '')}"
        if attrs.get("samples"):
            title += f" · {attrs['samples']} samples"
    fig.update_xaxes(title_text="source layer l")
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", width=1100, height=430,
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0.5, xanchor="center"),
                      margin=dict(l=50, r=20, t=70, b=90))
    return fig
