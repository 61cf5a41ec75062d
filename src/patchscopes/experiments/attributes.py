"""Experiment 2 of the paper: attribute extraction, the patchscope against a linear probe.

For each relation (see :mod:`patchscopes.data.relations`), a sample is a (subject, object) fact in a source
context S; h is the hidden state of the subject's last token at source layer l. The patchscope writes h over
the placeholder ``x`` of the relation's target prompt (``"The capital city of x"``) at target layer l*,
generates ``max_new_tokens`` greedy tokens (the patch applies at prefill only), and is correct when the
object appears in the text (:func:`patchscopes.data.relations.mentions`). It runs through :func:`patchscopes.run`.

Steps, per relation:

1. **Contexts**: the paper's WikiText windows where available, else windows of a text corpus containing the
   subject, else the relation's templates; the source position is recomputed with the model's tokenizer.
2. **Filter**: a fact is kept only if the model knows it: the object appears within ``max_new_tokens``
   greedy tokens of the verbalized target prompt (``"The capital city of France"``). The counts are
   reported (``counts``).
3. **Probe** (the paper's baseline): a logistic-regression probe per source layer on h, ``folds``-fold
   cross-validation over the known samples (at most ``probe_samples``), classes = the objects seen in
   training (:mod:`patchscopes.experiments.probes`).
4. **Patchscope** on at most ``max_samples`` of the known samples (a seeded random subset of the probe's),
   for every source layer × target layer.
5. **Summary** as the paper's Table 2: per source layer l, a sample counts as correct if the object
   appears for *some* l*; the accuracy is averaged over l (mean ± std over layers) and set against the
   probe's mean ± std over the same layers; a paired t-test over layers with a Bonferroni correction for the
   number of relations decides which method wins (or a tie).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from patchscopes.data.relations import (
    CONTEXT_KINDS,
    AttributeSample,
    Relation,
    RelationSample,
    check_target_prompt,
    corpus_windows,
    load_relation,
    locate_samples,
    mentions,
    subject_contexts,
)
from patchscopes.engine import capture_states
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.knows_fact import knows_fact
from patchscopes.experiments.probes import layer_probe, paired_ttest
from patchscopes.lenses.lre import DEFAULT_EXAMPLES, faithfulness, fit_lre, token_matches
from patchscopes.models import LanguageModel
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import Generate, NextToken, Patchscope, Source, Target
from patchscopes.specs import Spec, parse_spec

DEFAULT_SOURCE_LAYERS = "::3"
"""Every third source layer (0, 3, 6, ... : 10 of SmolLM2's 30)."""
DEFAULT_TARGET_LAYERS = None
"""``None``: every third layer of the first half of the model (0, 3, ..., 12 of SmolLM2's 30), where the paper and
our runs find the patch readable; later target layers rarely help (see docs/experiments/attributes.md)."""
DEFAULT_MAX_SAMPLES = 30
"""Known samples per relation given to the patchscope (the probe uses all known samples)."""

PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "fruit_inside_color": (37.4, 38.0),
    "fruit_outside_color": (35.5, 71.0),
    "object_superclass": (65.6, 54.8),
    "substance_phase": (73.8, 91.9),
    "task_done_by_tool": (10.1, 48.1),
    "company_ceo": (5.0, 47.8),
    "country_currency": (17.7, 51.0),
    "food_from_country": (5.1, 63.8),
    "person_plays_position_in_sport": (75.9, 72.2),
    "person_plays_pro_sport": (53.8, 46.3),
    "product_by_company": (58.9, 63.2),
    "star_constellation": (17.5, 18.4),
}
"""The paper's Table 2 (GPT-J-6B): (probe, patchscope) accuracy in %, mean over layers, by relation key."""

SUMMARY_COLUMNS = [
    "relation", "key", "samples", "probe_samples", "classes", "majority", "probe_mean", "probe_std", "patchscope_mean",
    "patchscope_std", "t_statistic", "p_value", "p_bonferroni", "winner", "paper_probe", "paper_patchscope",
    "lre_samples", "lre_mean", "lre_std", "lre_faithfulness", "lre_faithfulness_best", "lre_best_layer",
]

LRE_COLUMNS = ["relation", "sample", "source_layer", "token", "correct"]
FAITHFULNESS_COLUMNS = ["relation", "layer", "subject", "object", "lm_token", "lre_token", "faithful", "lm_correct",
                        "lre_correct"]

ProbeCV = Literal["samples", "subjects"]
METHODS = ("patchscope", "probe", "lre")
"""The methods of the experiment: the patchscope, the paper's probe, and the LRE attribute lens."""
DEFAULT_METHODS = ("patchscope", "probe")


@dataclass
class AttributeResults:
    """Everything the experiment measured, as tables.

    Attributes:
        counts: Per relation: target prompt, facts, contexts, samples found, facts and samples known, the
            samples given to the probe and to the patchscope, and the contexts by kind.
        fact_checks: Per relation and fact: the verbalized prompt, the model's greedy text and ``known``.
        samples: Per relation, the probe's samples (``sample`` numbers them; ``patchscope`` marks those the
            patchscope ran on, the first ones): subject, object, context kind, source text, position and token.
        patchscope: Per relation, sample, source layer and target layer: the generated text and ``correct``.
        probe: Per relation, layer and fold: the probe's accuracy and fold sizes.
        lre: Per relation, sample and source layer, the LRE attribute lens (f = the relation's LRE fitted at
            that layer, T = S, l* = L-1, read at the subject's last token): its top token and ``correct`` (the
            token is a non-empty prefix of the object, the LRE paper's test). Fitting subjects are left out.
        faithfulness: Per relation, source layer and test subject, the LRE paper's faithfulness on the
            in-context prompt (:func:`patchscopes.lenses.lre.faithfulness`).
        attrs: Settings and timings.
    """

    counts: pd.DataFrame
    fact_checks: pd.DataFrame
    samples: pd.DataFrame
    patchscope: pd.DataFrame
    probe: pd.DataFrame
    lre: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LRE_COLUMNS))
    faithfulness: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FAITHFULNESS_COLUMNS))
    attrs: dict = field(default_factory=dict)

    def pair_accuracy(self) -> pd.DataFrame:
        """Patchscope accuracy per (relation, source layer, target layer): columns ``relation, source_layer,
        target_layer, accuracy, n``."""
        if self.patchscope.empty:
            return pd.DataFrame(columns=["relation", "source_layer", "target_layer", "accuracy", "n"])
        grouped = self.patchscope.groupby(["relation", "source_layer", "target_layer"], sort=False)["correct"]
        out = grouped.agg(accuracy="mean", n="size").reset_index()
        out["accuracy"] = out["accuracy"].astype(float)
        return out

    def layer_accuracy(self) -> pd.DataFrame:
        """Per relation, method and source layer: ``relation, method, layer, accuracy, accuracy_std, n``.

        For the patchscope a sample is correct at layer l if it is correct for some target layer (the paper's
        measure) and ``accuracy_std`` is NaN; for the probe the accuracy is the mean over folds and
        ``accuracy_std`` the standard deviation over folds.
        """
        frames = []
        if not self.patchscope.empty:
            best = (self.patchscope.groupby(["relation", "sample", "source_layer"], sort=False)["correct"].any()
                    .reset_index())
            patch = best.groupby(["relation", "source_layer"], sort=False)["correct"].agg(
                accuracy="mean", n="size").reset_index().rename(columns={"source_layer": "layer"})
            patch.insert(1, "method", "patchscope")
            patch["accuracy_std"] = math.nan
            frames.append(patch)
        if not self.probe.empty:
            probe = self.probe.groupby(["relation", "layer"], sort=False).agg(
                accuracy=("accuracy", "mean"), accuracy_std=("accuracy", lambda a: float(np.std(a))),
                n=("n_test", "sum")).reset_index()
            probe.insert(1, "method", "probe")
            frames.append(probe)
        if not self.lre.empty:
            lre = self.lre.groupby(["relation", "source_layer"], sort=False)["correct"].agg(
                accuracy="mean", n="size").reset_index().rename(columns={"source_layer": "layer"})
            lre.insert(1, "method", "lre")
            lre["accuracy_std"] = math.nan
            frames.append(lre)
        columns = ["relation", "method", "layer", "accuracy", "accuracy_std", "n"]
        if not frames:
            return pd.DataFrame(columns=columns)
        out = pd.concat(frames, ignore_index=True)[columns]
        out["accuracy"] = out["accuracy"].astype(float)
        return out

    def summary(self, *, alpha: float = 0.05) -> pd.DataFrame:
        """The paper's Table 2: per relation, samples, classes, probe and patchscope mean ± std over the
        source layers (accuracies in [0, 1]), the paired t-test over layers with a Bonferroni correction for
        the number of relations tested, the winner (``patchscope``, ``probe`` or ``tie``) and the paper's
        GPT-J figures (in %) where the relation is one of its Table 2. ``majority`` is the share of the most
        common object among the probe's samples (what always answering it would score)."""
        by_layer = self.layer_accuracy()
        rows = []
        tests = {}
        for record in self.counts.itertuples():
            rel = record.relation
            patch = by_layer[(by_layer["relation"] == rel) & (by_layer["method"] == "patchscope")]
            probe = by_layer[(by_layer["relation"] == rel) & (by_layer["method"] == "probe")]
            common = sorted(set(patch["layer"]) & set(probe["layer"]))
            a = patch.set_index("layer").loc[common, "accuracy"].to_numpy() if common else np.array([])
            b = probe.set_index("layer").loc[common, "accuracy"].to_numpy() if common else np.array([])
            tests[rel] = (a, b)
            paper = PAPER_TABLE2.get(record.key, (math.nan, math.nan))
            objects = (self.samples.loc[self.samples["relation"] == rel, "object"] if len(self.samples)
                       else pd.Series(dtype=object))
            majority = float(objects.value_counts().iloc[0] / len(objects)) if len(objects) else math.nan
            lre = by_layer[(by_layer["relation"] == rel) & (by_layer["method"] == "lre")]
            faith = self.faithfulness[self.faithfulness["relation"] == rel]
            faith = faith["faithful"].astype(float).groupby(faith["layer"]).mean()
            rows.append({
                "lre_samples": int(lre["n"].max()) if len(lre) else 0,
                "lre_mean": _mean(lre["accuracy"]), "lre_std": _std(lre["accuracy"]),
                "lre_faithfulness": _mean(faith),
                "lre_faithfulness_best": float(faith.max()) if len(faith) else math.nan,
                "lre_best_layer": int(faith.idxmax()) if len(faith) else None,
                "relation": rel, "key": record.key, "samples": int(record.patchscope_samples),
                "probe_samples": int(record.probe_samples), "classes": int(record.probe_classes),
                "majority": majority,
                "probe_mean": _mean(probe["accuracy"]), "probe_std": _std(probe["accuracy"]),
                "patchscope_mean": _mean(patch["accuracy"]), "patchscope_std": _std(patch["accuracy"]),
                "paper_probe": paper[0], "paper_patchscope": paper[1],
            })
        n_tests = max(1, sum(len(a) >= 2 for a, _ in tests.values()))
        for row in rows:
            a, b = tests[row["relation"]]
            if len(a) >= 2:
                test = paired_ttest(a, b, n_tests=n_tests, alpha=alpha)
                winner = {"a": "patchscope", "b": "probe", "tie": "tie"}[test.winner]
                row.update(t_statistic=test.statistic, p_value=test.p_value, p_bonferroni=test.p_bonferroni,
                           winner=winner)
            else:
                row.update(t_statistic=math.nan, p_value=math.nan, p_bonferroni=math.nan, winner="n/a")
        frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        frame.attrs.update(self.attrs, n_tests=n_tests, alpha=alpha)
        return frame

    def records(self, *, alpha: float = 0.05) -> list[dict]:
        """JSON-ready records at three levels (``level``), each with ``relation, method, source_layer,
        target_layer, accuracy, n``:

        - ``pair``: the patchscope at one (source layer, target layer);
        - ``layer``: the patchscope at one source layer, correct for some target layer (``target_layer`` null),
          and the probe at one layer (``target_layer`` null, ``accuracy_std`` over folds);
        - ``relation``: each method's mean over source layers (``source_layer`` null, ``accuracy_std`` over
          layers), with the t-test and the paper's figure.
        """
        out: list[dict] = []
        keys = dict(zip(self.counts["relation"], self.counts["key"])) if len(self.counts) else {}
        for r in self.pair_accuracy().itertuples():
            out.append({"relation": r.relation, "key": keys.get(r.relation), "level": "pair",
                        "method": "patchscope", "source_layer": int(r.source_layer),
                        "target_layer": int(r.target_layer), "accuracy": float(r.accuracy), "n": int(r.n)})
        for r in self.layer_accuracy().itertuples():
            rec = {"relation": r.relation, "key": keys.get(r.relation), "level": "layer", "method": r.method,
                   "source_layer": int(r.layer), "target_layer": None, "accuracy": float(r.accuracy),
                   "n": int(r.n)}
            if r.method == "probe":
                rec["accuracy_std"] = _clean(r.accuracy_std)
            out.append(rec)
        for r in self.summary(alpha=alpha).itertuples():
            common = {"relation": r.relation, "key": r.key, "level": "relation", "source_layer": None,
                      "target_layer": None, "t_statistic": _clean(r.t_statistic), "p_value": _clean(r.p_value),
                      "p_bonferroni": _clean(r.p_bonferroni), "winner": r.winner, "classes": int(r.classes)}
            out.append({**common, "method": "probe", "accuracy": _clean(r.probe_mean),
                        "accuracy_std": _clean(r.probe_std), "n": int(r.probe_samples),
                        "majority": _clean(r.majority), "paper_accuracy": _clean(r.paper_probe)})
            out.append({**common, "method": "patchscope", "accuracy": _clean(r.patchscope_mean),
                        "accuracy_std": _clean(r.patchscope_std), "n": int(r.samples),
                        "paper_accuracy": _clean(r.paper_patchscope)})
            if not math.isnan(r.lre_mean) or not math.isnan(r.lre_faithfulness):
                out.append({**common, "method": "lre", "accuracy": _clean(r.lre_mean),
                            "accuracy_std": _clean(r.lre_std), "n": int(r.lre_samples),
                            "faithfulness": _clean(r.lre_faithfulness),
                            "faithfulness_best": _clean(r.lre_faithfulness_best),
                            "faithfulness_best_layer": r.lre_best_layer})
        if not self.faithfulness.empty:
            faith = self.faithfulness.groupby(["relation", "layer"], sort=False)["faithful"].agg(
                faithfulness="mean", n="size").reset_index()
            for r in faith.itertuples():
                out.append({"relation": r.relation, "key": keys.get(r.relation), "level": "layer",
                            "method": "lre-faithfulness", "source_layer": int(r.layer), "target_layer": None,
                            "accuracy": float(r.faithfulness), "n": int(r.n)})
        return out


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if len(values) else math.nan


def _std(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std()) if len(values) else math.nan


def _clean(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# -- hidden states -----------------------------------------------------------------------------------------
def subject_states(
    model: LanguageModel,
    samples: Sequence[AttributeSample],
    layers: Sequence[int],
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """The hidden states h of every sample at every layer: ``(n, len(layers), d)`` float32.

    One left-padded, early-stopped forward per batch of source texts reads all layers at the subject's last
    token (the states the patchscope patches).
    """
    layers = [model.check_layer(layer, "source layer") for layer in layers]
    out = np.zeros((len(samples), len(layers), model.hidden_size), dtype=np.float32)
    if not samples:
        return out
    encoded = [model.encode(s.text) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: len(encoded[i]))
    for first in range(0, len(order), batch_size):
        rows = order[first: first + batch_size]
        states = capture_states(model, [encoded[r] for r in rows], [[samples[r].position] for r in rows], layers)
        out[rows] = states.numpy()
    return out


# -- the experiment ----------------------------------------------------------------------------------------
def default_target_layers(num_layers: int) -> list[int]:
    """Every third layer of the first half of the model: ``0, 3, ...`` below ``ceil(L / 2)``."""
    return list(range(0, max(1, math.ceil(num_layers / 2)), 3))


def _target_prompt_for(relation: Relation, target_prompts: dict[str, str] | None) -> str:
    prompts = target_prompts or {}
    prompt = prompts.get(relation.key) or prompts.get(relation.name)
    if prompt is None and "*" in prompts:
        prompt = prompts["*"]
    return check_target_prompt(prompt if prompt is not None else relation.resolved_target_prompt())


def evaluate_attributes(
    model: LanguageModel,
    relations: Sequence[Relation | str | Path],
    *,
    target_prompts: dict[str, str] | None = None,
    source_layers: Spec = DEFAULT_SOURCE_LAYERS,
    target_layers: Spec | None = DEFAULT_TARGET_LAYERS,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    probe_samples: int | None = None,
    contexts: Sequence[str] = CONTEXT_KINDS,
    corpus: Sequence | None = None,
    contexts_per_subject: int = 5,
    window_tokens: int = 20,
    max_new_tokens: int = 20,
    fact_filter: bool = True,
    folds: int = 3,
    probe_cv: ProbeCV = "subjects",
    seed: int = 0,
    batch_size: int = 32,
    methods: Sequence[str] = DEFAULT_METHODS,
    lre_examples: int = DEFAULT_EXAMPLES,
    lre_beta: float | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
) -> AttributeResults:
    """Run the attribute-extraction experiment on ``relations``.

    Args:
        model: The model (source and target).
        relations: :class:`~patchscopes.data.relations.Relation` values or relation files.
        target_prompts: Target prompts by relation key or name (``"*"``: any relation), each with one
            placeholder ``x``; by default the relation's own (the paper's, the TSV's, or one derived from the
            first template).
        source_layers: Source layers l (a SPEC; default every third layer).
        target_layers: Target layers l* (a SPEC; ``None``: every third layer of the model's first half).
        max_samples: The most known samples per relation for the patchscope (``None``: all).
        probe_samples: The most known samples per relation for the probe (``None``: all). The patchscope's
            samples are always among the probe's.
        contexts: Kinds of source contexts allowed, in order of preference (``wikitext``, ``corpus``,
            ``template``).
        corpus: Documents (texts or :class:`~patchscopes.data.text.Document`) to find subjects in.
        contexts_per_subject: The most source contexts per subject.
        window_tokens: The length of corpus windows in tokens.
        max_new_tokens: Tokens generated by the fact check and by each patched run (the paper: 20).
        fact_filter: Keep only facts the model knows (the paper's filter); off, every located sample is kept.
        folds: Cross-validation folds of the probe (the paper: 3).
        probe_cv: ``"subjects"`` (a subject's contexts stay in one fold, so the probe is tested on subjects it
            never saw) or ``"samples"`` (folds over samples, stratified by object; the other contexts of a test
            subject are then in training).
        seed: Seed of the sample selection and of the folds.
        batch_size: Prompts per forward pass of the fact check and of the hidden-state capture.
        methods: Which of :data:`METHODS` to run: ``patchscope``, ``probe`` and ``lre`` (the LRE attribute
            lens: per relation and source layer, an LRE fitted on ``lre_examples`` in-context examples, applied
            to the subject's state in each source context, T = S, l* = L-1; and its faithfulness on the known
            subjects' in-context prompts). The LRE's fitting subjects are left out of its evaluation.
        lre_examples: In-context examples per LRE (the paper: 8).
        lre_beta: β of the LREs (``None``: chosen on the fitting examples).
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Returns:
        An :class:`AttributeResults`; ``.summary()`` is the paper's Table 2.

    Raises:
        PatchscopesError: Bad options or relation files; a relation without a usable target prompt.
    """
    options = run_options(options, legacy, "evaluate_attributes")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="evaluate_attributes", models=[model], data=[relations, corpus],
                         settings=settings_of(locals(), exclude=("model", "relations", "corpus")))
    start = time.perf_counter()
    if max_samples is not None and max_samples < 1:
        raise PatchscopesError(f"max_samples must be at least 1, got {max_samples}")
    if probe_samples is not None and probe_samples < 1:
        raise PatchscopesError(f"probe_samples must be at least 1, got {probe_samples}")
    if max_new_tokens < 1:
        raise PatchscopesError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if probe_cv not in ("samples", "subjects"):
        raise PatchscopesError(f"unknown probe cross-validation {probe_cv!r}", hint="use samples or subjects")
    if contexts_per_subject < 1:
        raise PatchscopesError(f"contexts_per_subject must be at least 1, got {contexts_per_subject}")
    if not relations:
        raise PatchscopesError("no relations given")
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PatchscopesError(f"unknown method(s) {', '.join(unknown) or '(none given)'}",
                               hint=f"use some of {', '.join(METHODS)}")
    rels = [r if isinstance(r, Relation) else load_relation(r) for r in relations]
    names = [r.name for r in rels]
    if len(set(names)) != len(names):
        raise PatchscopesError("two relations have the same name", hint="give each relation once")
    src_layers = parse_spec(source_layers, model.num_layers, what="source layer")
    tgt_layers = (default_target_layers(model.num_layers) if target_layers is None
                  else parse_spec(target_layers, model.num_layers, what="target layer"))
    prompts = {r.name: _target_prompt_for(r, target_prompts) for r in rels}
    readout = Generate(max_new_tokens=max_new_tokens)

    counts, checks, sample_rows, patch_rows, probe_frames = [], [], [], [], []
    lre_rows: list[tuple] = []
    faith_frames = []
    for relation in rels:
        t0 = time.perf_counter()
        prompt = prompts[relation.name]
        corpus_found = {}
        if "corpus" in contexts and corpus:
            needing = [s.subject for s in relation.samples
                       if not ("wikitext" in contexts and contexts.index("wikitext") < contexts.index("corpus")
                               and relation.windows.get(s.subject))]
            corpus_found = corpus_windows(model, corpus, needing, per_subject=contexts_per_subject,
                                          window_tokens=window_tokens)
        found = subject_contexts(relation, corpus=corpus_found, kinds=contexts, per_subject=contexts_per_subject)
        located, dropped = locate_samples(model, relation, found)
        pairs = list(dict.fromkeys((s.subject, s.object, s.aliases) for s in located))
        if fact_filter and pairs:
            bar = tqdm(total=len(pairs), desc=f"{relation.name}: facts", unit="fact", disable=not progress)
            try:
                results = knows_fact(model, [relation.verbalize(p[0], prompt) for p in pairs], [p[1] for p in pairs],
                                     aliases=[p[2] for p in pairs], max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=bar, run_dir=store)
            finally:
                bar.close()
            known = {p for p, r in zip(pairs, results) if r.known}
            for p, r in zip(pairs, results):
                checks.append({"relation": relation.name, "subject": p[0], "object": p[1], "prompt": r.prompt,
                               "generated_text": r.generated_text, "known": r.known})
        else:
            known = set(pairs)
        kept = [s for s in located if (s.subject, s.object, s.aliases) in known]
        order = np.random.RandomState(seed).permutation(len(kept)).tolist()
        chosen_probe = [kept[i] for i in order[: probe_samples or len(kept)]]
        chosen = chosen_probe[: max_samples or len(chosen_probe)]

        # The probe (the paper's baseline) on the hidden states of the known samples.
        probe_classes = len({s.object for s in chosen_probe})
        probe_note = "" if "probe" in methods else "not run"
        if "probe" not in methods:
            pass
        elif len(chosen_probe) >= folds:
            states = subject_states(model, chosen_probe, src_layers, batch_size=batch_size)
            groups = [s.subject for s in chosen_probe] if probe_cv == "subjects" else None
            try:
                frame = layer_probe(states, [s.object for s in chosen_probe], src_layers, folds=folds, seed=seed,
                                    groups=groups)
                frame.insert(0, "relation", relation.name)
                probe_frames.append(frame)
            except PatchscopesError as err:
                probe_note = err.message
        else:
            probe_note = f"{len(chosen_probe)} known samples, fewer than {folds} folds"

        # The patchscope on its samples, all (l, l*) pairs, in one call of the engine.
        scopes = [Patchscope(Source(s.text, layer, s.position), Target(prompt, t_layer, "x"), readout)
                  for s in chosen for layer in src_layers for t_layer in tgt_layers] if "patchscope" in methods else []
        results = run(scopes, model, **options.with_(run_dir=store).run_kwargs()) if scopes else []
        for index, s in enumerate(chosen_probe):
            sample_rows.append({"relation": relation.name, "sample": index, "subject": s.subject, "object": s.object,
                                "kind": s.kind, "source_text": s.text, "source_position": s.position,
                                "source_token": s.token, "patchscope": index < len(chosen)})
        k = 0
        for index, s in enumerate(chosen if scopes else []):
            for layer in src_layers:
                for t_layer in tgt_layers:
                    text = results[k].generated_text or ""
                    patch_rows.append((relation.name, index, layer, t_layer, text, mentions(text, s.object, s.aliases)))
                    k += 1
        lre_note = ""
        if "lre" in methods:
            try:
                rows, faith = _lre_method(model, relation, chosen, chosen_probe, src_layers, examples=lre_examples,
                                          beta=lre_beta, seed=seed, options=options.with_(run_dir=None))
                lre_rows.extend(rows)
                faith_frames.append(faith)
            except PatchscopesError as err:
                lre_note = err.message
        kinds = pd.Series([s.kind for s in located], dtype=object).value_counts().to_dict()
        counts.append({
            "relation": relation.name, "key": relation.key, "target_prompt": prompt, "facts": len(relation.samples),
            "facts_with_context": len(pairs), "contexts_dropped": dropped, "samples_found": len(located),
            "facts_known": len(known), "samples_known": len(kept), "probe_samples": len(chosen_probe),
            "probe_classes": probe_classes, "patchscope_samples": len(chosen),
            **{f"contexts_{kind}": int(kinds.get(kind, 0)) for kind in CONTEXT_KINDS},
            "probe_note": probe_note, "lre_note": lre_note, "seconds": round(time.perf_counter() - t0, 1),
        })

    probe = (pd.concat(probe_frames, ignore_index=True) if probe_frames else
             pd.DataFrame(columns=["relation", "layer", "fold", "accuracy", "n_test", "n_train", "classes"]))
    attrs = dict(
        model=model.name, num_layers=model.num_layers, source_layers=src_layers, target_layers=tgt_layers,
        max_samples=max_samples, probe_samples=probe_samples, contexts=list(contexts),
        contexts_per_subject=contexts_per_subject, window_tokens=window_tokens, max_new_tokens=max_new_tokens,
        fact_filter=fact_filter, folds=folds, probe_cv=probe_cv, seed=seed, engine=options.engine, methods=methods,
        lre_examples=lre_examples if "lre" in methods else None, lre_beta=lre_beta,
        seconds=round(time.perf_counter() - start, 1),
    )
    return AttributeResults(
        counts=pd.DataFrame(counts),
        fact_checks=pd.DataFrame(checks, columns=["relation", "subject", "object", "prompt", "generated_text",
                                                  "known"]),
        samples=pd.DataFrame(sample_rows, columns=["relation", "sample", "subject", "object", "kind", "source_text",
                                                   "source_position", "source_token", "patchscope"]),
        patchscope=pd.DataFrame(patch_rows, columns=["relation", "sample", "source_layer", "target_layer",
                                                     "generated_text", "correct"]),
        probe=probe,
        lre=pd.DataFrame(lre_rows, columns=LRE_COLUMNS),
        faithfulness=(pd.concat(faith_frames, ignore_index=True)[FAITHFULNESS_COLUMNS] if faith_frames
                      else pd.DataFrame(columns=FAITHFULNESS_COLUMNS)),
        attrs=attrs,
    )


def _lre_method(
    model: LanguageModel,
    relation: Relation,
    chosen: Sequence[AttributeSample],
    known: Sequence[AttributeSample],
    layers: Sequence[int],
    *,
    examples: int,
    beta: float | None,
    seed: int,
    options: RunOptions,
) -> tuple[list[tuple], pd.DataFrame]:
    """The LRE attribute lens on ``chosen`` (the patchscope's samples, in their source contexts) at every
    source layer, and the LRE's faithfulness on the in-context prompts of the ``known`` subjects; the
    fitting subjects are left out of both."""
    lres = fit_lre(model, relation, layers, examples=examples, beta=beta, seed=seed, options=options)
    fitted = {x.subject for x in next(iter(lres.values())).examples}
    tests = [(index, s) for index, s in enumerate(chosen) if s.subject not in fitted]
    scopes = [Patchscope(Source(s.text, layer, s.position),
                         Target(s.text, -1, s.position, mapping=lres[layer].mapping()),
                         NextToken(top_k=1, position=s.position))
              for _, s in tests for layer in layers]
    results = run(scopes, model, **options.run_kwargs()) if scopes else []
    rows, k = [], 0
    for index, s in tests:
        for layer in layers:
            token = results[k].top_tokens[0]
            rows.append((relation.name, index, layer, token, token_matches(token, s.object, s.aliases)))
            k += 1
    subjects = [RelationSample(s.subject, s.object, s.aliases) for s in known if s.subject not in fitted]
    frames = [faithfulness(model, lres[layer], subjects, options=options) for layer in layers] if subjects else []
    faith = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FAITHFULNESS_COLUMNS)
    return rows, faith


# -- figure ------------------------------------------------------------------------------------------------
def attributes_figure(results: AttributeResults, *, title: str | None = None):
    """One heatmap per relation: patchscope accuracy per source layer (rows) × target layer (columns), with
    two extra columns: ``any l*`` (the paper's measure at each source layer) and ``probe``.

    Returns:
        A plotly figure (save it with :func:`patchscopes.plots.save_figure`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pairs = results.pair_accuracy()
    by_layer = results.layer_accuracy()
    relations = list(results.counts["relation"]) if len(results.counts) else []
    if not relations:
        raise PatchscopesError("no relation to plot")
    cols = min(3, len(relations))
    rows = math.ceil(len(relations) / cols)
    summary = results.summary()
    titles = []
    for rel in relations:
        s = summary[summary["relation"] == rel].iloc[0]
        lre = f", LRE {_pct(s['lre_mean'])}" if not results.lre.empty else ""
        titles.append(f"{rel} (n={s['samples']}): patchscope {_pct(s['patchscope_mean'])}, "
                      f"probe {_pct(s['probe_mean'])}{lre}")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=min(0.12, 0.5 / max(1, rows)))
    src_layers = results.attrs.get("source_layers", [])
    tgt_layers = results.attrs.get("target_layers", [])
    extra = [("patchscope", "any l*"), ("probe", "probe")] + ([("lre", "lre")] if not results.lre.empty else [])
    x_labels = [str(t) for t in tgt_layers] + [label for _, label in extra]
    for k, rel in enumerate(relations):
        cell = {(r.source_layer, r.target_layer): (r.accuracy, r.n) for r in pairs[pairs["relation"] == rel]
                .itertuples()}
        layer = {(r.method, r.layer): (r.accuracy, r.n) for r in by_layer[by_layer["relation"] == rel].itertuples()}
        z, text = [], []
        for l in src_layers:  # noqa: E741
            row_z, row_t = [], []
            for t in tgt_layers:
                acc, n = cell.get((l, t), (None, 0))
                row_z.append(acc)
                row_t.append(f"l={l}, l*={t}<br>accuracy {_pct(acc)} (n={n})")
            for method, label in extra:
                acc, n = layer.get((method, l), (None, 0))
                row_z.append(acc)
                row_t.append(f"l={l}, {label}<br>accuracy {_pct(acc)} (n={n})")
            z.append(row_z)
            text.append(row_t)
        fig.add_trace(go.Heatmap(
            z=z, x=x_labels, y=[str(l) for l in src_layers], zmin=0, zmax=1, colorscale="Viridis",  # noqa: E741
            text=text, hovertemplate="%{text}<extra></extra>", showscale=k == 0,
            colorbar=dict(title="accuracy", len=0.6)), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(title_text="target layer l*", type="category")
    fig.update_yaxes(title_text="source layer l", type="category", autorange="reversed")
    if title is None:
        title = f"Attribute extraction · {results.attrs.get('model', '')} · patchscope accuracy per (l, l*)"
    fig.update_layout(title=title, template="plotly_white", width=max(600, 520 * cols),
                      height=max(450, 420 * rows), margin=dict(l=60, r=30, t=90, b=50))
    return fig


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}%"
