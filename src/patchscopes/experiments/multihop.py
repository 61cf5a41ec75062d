"""Multi-hop correction (the paper's §4.5): fixing two-hop queries by patching one hop into the other.

Pipeline (REFERENCE.md §2, "Multi-hop correction"):

1. **Queries.** Two-hop queries s →(A) o1 →(B) o2 are built by chaining relation files
   (:func:`patchscopes.data.two_hop.build_queries`).
2. **Filter.** A query is kept where the model answers each hop alone: o1 appears within ``max_new_tokens``
   greedy tokens of the hop-1 prompt, and o2 within those of the hop-2 prompt. The count after each step is
   kept (``attrs["counts"]``).
3. **Baselines** on the kept queries: the *vanilla* composed prompt and a *chain-of-thought* prompt ("Let's
   think step by step", :data:`~patchscopes.data.two_hop.COT_TEMPLATE`), both greedy.
4. **CoT patchscope.** For every pair (l, l*) of source and target layers, one hop's hidden state is patched
   into the other hop, and the target generates ``max_new_tokens`` tokens (patched at prefill only). A
   generation is correct where o2 appears in it. Two directions (the paper's text and its code disagree):

   - ``hop1-into-hop2`` (the paper's text): h = the last token of the hop-1 prompt (``"Visual Basic was created
     by"``, whose next token is o1) at layer l; the target is the composed prompt (``"The CEO of the company
     that Visual Basic was created by is"``), patched at layer l* on the last token of the description that
     stands for o1 (``"by"``), and read from its end.
   - ``hop2-into-hop1`` (the paper's code, ``multihop-CoT.ipynb``): h = the last token of hop 2's text before
     the description (``"The CEO of"``) at layer l; the target is the description followed by the rest of hop
     2's template (``"the company that Visual Basic was created by is"``), patched at layer l* on the
     description's last token.

5. **Scores.** *Oracle* (as the paper reports it): a query is correct if any (l, l*) pair yields o2. *Held-out*
   (honest): the queries are split into a development and a test part (seeded); the single pair with the best
   development accuracy (ties: the best mean accuracy of its 3×3 neighbourhood in the swept grid, then the
   lowest layers) is applied to the test part. A single pair, not a region scored "any of": picking among
   several generations would need the answer. The oracle on the test part is reported next to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from patchscopes.data.relations import mentions, normalize_text
from patchscopes.data.two_hop import COT_TEMPLATE, TwoHopQuery, build_queries, split_queries
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.knows_fact import generate_texts, knows_fact
from patchscopes.models import LanguageModel
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import Generate, Patchscope, Source, Target
from patchscopes.specs import parse_spec

Direction = Literal["hop1-into-hop2", "hop2-into-hop1"]
DIRECTIONS: tuple[str, ...] = ("hop1-into-hop2", "hop2-into-hop1")
MULTIHOP_METHODS = ("vanilla", "cot", "patchscope-oracle", "patchscope-heldout")
"""The methods of the summary table."""

RECORD_COLUMNS = ["query_id", "method", "split", "source_layer", "target_layer", "correct", "generated_text",
                  "answer", "relation1", "relation2"]


def default_layers(model: LanguageModel) -> str:
    """The default layer SPEC: about ten layers, evenly spaced, always ending with the last layer.

    For SmolLM2-135M (30 layers) this is ``"2:30:3"`` (2, 5, ..., 29); for Gemma-3-270M (18 layers) ``"1:18:2"``.
    """
    n = model.num_layers
    step = max(1, math.ceil(n / 10))
    return f"{(n - 1) % step}:{n}:{step}"


def multihop_scope(query: TwoHopQuery, source_layer: int, target_layer: int, direction: Direction,
                   max_new_tokens: int = 20, *, donor: TwoHopQuery | None = None) -> Patchscope:
    """The CoT patchscope of one query at one (l, l*) pair (see the module's documentation).

    Args:
        query: The query (its target prompt, and its source unless ``donor`` is given).
        source_layer: l.
        target_layer: l*.
        direction: ``"hop1-into-hop2"`` or ``"hop2-into-hop1"``.
        max_new_tokens: Tokens generated from the patched target.
        donor: The control: take the source from this other query instead (see :func:`control_donors`).

    Raises:
        PatchscopesError: An unknown direction.
    """
    readout = Generate(max_new_tokens=max_new_tokens)
    giver = donor or query
    if direction == "hop1-into-hop2":
        source = Source(giver.hop1_prompt, source_layer, -1)
        target = Target(query.composed_prompt, target_layer, query.description)
    elif direction == "hop2-into-hop1":
        source = Source(giver.hop2_prefix, source_layer, -1)
        target = Target(query.description + query.hop2_suffix, target_layer, query.description)
    else:
        raise PatchscopesError(f"unknown direction {direction!r}", hint=f"use {' or '.join(DIRECTIONS)}")
    return Patchscope(source, target, readout)


def control_donors(queries: Sequence[TwoHopQuery], direction: Direction) -> list[TwoHopQuery | None]:
    """For each query, the query whose source the control patches in instead of its own, or ``None``.

    The donor is the next query in order (cyclically) whose source prompt differs (in the direction's sense:
    the hop-1 prompt, or hop 2's text before the description) and whose answer differs from the query's, so
    that the donor's hidden state carries the wrong intermediate entity. The control measures how often the
    answer appears when the patch carries no information about the query: the patch perturbs the target, and a
    perturbed generation may name the answer by chance.
    """
    def source(q: TwoHopQuery) -> str:
        return q.hop1_prompt if direction == "hop1-into-hop2" else q.hop2_prefix

    out: list[TwoHopQuery | None] = []
    n = len(queries)
    for k, q in enumerate(queries):
        donor = None
        for step in range(1, n):
            other = queries[(k + step) % n]
            if (source(other) != source(q) and normalize_text(other.bridge) != normalize_text(q.bridge)
                    and normalize_text(other.answer) != normalize_text(q.answer)):
                donor = other
                break
        out.append(donor)
    return out


def filter_known(
    model: LanguageModel, queries: Sequence[TwoHopQuery], *, max_new_tokens: int = 20, batch_size: int = 32,
    options: RunOptions | None = None, **legacy: Any,
) -> tuple[list[TwoHopQuery], dict[str, int], pd.DataFrame]:
    """Keep the queries whose two hops the model answers alone: the answer (or an alias) appears within
    ``max_new_tokens`` greedy tokens (:func:`patchscopes.experiments.knows_fact.knows_fact`).

    Hop 1 is answered if any of its candidate prompts (``hop1_prompts``: each of relation A's templates) makes
    the model name o1; the kept query's ``hop1_prompt`` is the first such prompt. Hop 2 is its one prompt (the
    template the composed prompt is built from). Each distinct prompt is generated once. Of ``options``
    (:class:`~patchscopes.runs.RunOptions`), the progress bar and an open run directory keeping the texts.

    Returns:
        The kept queries (in order), the counts ``{"queries", "hop1_known", "both_known"}``, and one row per
        query and hop (``query_id, hop, prompt, answer, generated_text, correct``).
    """
    options = run_options(options, legacy, "filter_known")
    checks: dict[tuple[str, str], object] = {}
    for q in queries:
        for prompt in q.hop1_prompts or (q.hop1_prompt,):
            checks.setdefault((prompt, q.bridge), q.bridge_aliases)
        checks.setdefault((q.hop2_prompt, q.answer), q.answer_aliases)
    keys = list(checks)
    bar = tqdm(total=len(keys), desc="hops", unit="prompt", disable=not options.progress)
    try:
        found = knows_fact(model, [k[0] for k in keys], [k[1] for k in keys], aliases=[checks[k] for k in keys],
                           max_new_tokens=max_new_tokens, batch_size=batch_size, progress=bar,
                           run_dir=options.run_dir)  # type: ignore[arg-type]
    finally:
        bar.close()
    by_key = dict(zip(keys, found))
    rows = []
    kept = []
    n_hop1 = 0
    for q in queries:
        hop1_checks = [by_key[(p, q.bridge)] for p in q.hop1_prompts or (q.hop1_prompt,)]
        hop1 = next((c for c in hop1_checks if c.known), hop1_checks[0])
        hop2 = by_key[(q.hop2_prompt, q.answer)]
        rows.append((q.query_id, 1, hop1.prompt, q.bridge, hop1.generated_text, hop1.known))
        rows.append((q.query_id, 2, q.hop2_prompt, q.answer, hop2.generated_text, hop2.known))
        n_hop1 += hop1.known
        if hop1.known and hop2.known:
            kept.append(replace(q, hop1_prompt=hop1.prompt))
    counts = {"queries": len(queries), "hop1_known": n_hop1, "both_known": len(kept)}
    frame = pd.DataFrame(rows, columns=["query_id", "hop", "prompt", "answer", "generated_text", "correct"])
    return kept, counts, frame


def multihop_samples(
    model: LanguageModel,
    relations: Sequence[object] | None = None,
    *,
    queries: Sequence[TwoHopQuery] | None = None,
    direction: Direction = "hop1-into-hop2",
    source_layers: str | int | Sequence[int] | None = None,
    target_layers: str | int | Sequence[int] | None = None,
    max_queries: int | None = None,
    max_per_chain: int | None = None,
    match_types: bool = True,
    hop_filter: bool = True,
    control: bool = False,
    dev_fraction: float = 0.5,
    seed: int = 0,
    max_new_tokens: int = 20,
    cot_tokens: int = 40,
    cot_template: str = COT_TEMPLATE,
    queries_per_run: int = 4,
    options: RunOptions | None = None,
    **legacy: Any,
) -> pd.DataFrame:
    """Run the multi-hop experiment; one row per (query, method, layer pair).

    Args:
        model: The model (source and target).
        relations: Relations to chain (objects or dicts of the evandez/relations schema), or
        queries: ready-made two-hop queries (then ``relations`` is not used).
        direction: ``"hop1-into-hop2"`` (the paper's text) or ``"hop2-into-hop1"`` (the paper's code).
        source_layers: Layers l (a SPEC such as ``"all"``, ``"0:30:3"``; default :func:`default_layers`).
        target_layers: Layers l* (same default).
        max_queries: Use at most this many of the kept queries (a seeded sample), bounding the sweep's cost.
        max_per_chain: Build at most this many candidate queries per relation pair (bounds the filter's cost).
        match_types: Chain relations only where hop 1's range name is hop 2's domain name.
        hop_filter: Keep only queries whose hops the model answers alone (:func:`filter_known`); without it,
            every query is used (and ``hop1_prompt`` stays the first template's).
        control: Also run the control over the same pairs: the source taken from another query
            (:func:`control_donors`), rows with ``method == "control"``.
        dev_fraction: Share of the used queries in the development split.
        seed: Seed of the samples and of the split.
        max_new_tokens: Greedy tokens for the hop filter, the vanilla prompt and the patched generations.
        cot_tokens: Greedy tokens for the chain-of-thought prompt (it needs room to reason).
        cot_template: The chain-of-thought prompt, with ``{composed}``.
        queries_per_run: Queries whose layer pairs go to the engine together.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Returns:
        Columns :data:`RECORD_COLUMNS`: ``method`` is ``vanilla``, ``cot`` (layers empty), ``patchscope`` or
        ``control`` (one row per pair); ``split`` is ``dev`` or ``test``. ``attrs`` holds the counts at each
        filtering step (``counts``), the chains, the hop rows (``hops``) and the settings.

    Raises:
        PatchscopesError: Bad options, or no query to start from.
    """
    options = run_options(options, legacy, "multihop_samples")
    store = open_run_dir(options.run_dir, command="multihop_samples", models=[model], data=[relations, queries],
                         settings=settings_of(locals(), exclude=("model", "relations", "queries")))
    start = time.perf_counter()
    if direction not in DIRECTIONS:
        raise PatchscopesError(f"unknown direction {direction!r}", hint=f"use {' or '.join(DIRECTIONS)}")
    for name, value in (("max_new_tokens", max_new_tokens), ("cot_tokens", cot_tokens),
                        ("queries_per_run", queries_per_run)):
        if value < 1:
            raise PatchscopesError(f"{name} must be at least 1, got {value}")
    if max_queries is not None and max_queries < 1:
        raise PatchscopesError(f"max_queries must be at least 1, got {max_queries}")
    src_layers = parse_spec(source_layers if source_layers is not None else default_layers(model),
                            model.num_layers, what="source layer")
    tgt_layers = parse_spec(target_layers if target_layers is not None else default_layers(model),
                            model.num_layers, what="target layer")
    chains: list[tuple[str, str, int]] = []
    skipped: dict[str, int] = {}
    counts: dict[str, int] = {}
    if queries is None:
        if relations is None:
            raise PatchscopesError("give relations to chain or ready-made queries")
        relations = list(relations)
        report = build_queries(relations, match_types=match_types, cot_template=cot_template,
                               max_per_chain=max_per_chain, seed=seed)
        queries, chains, skipped = report.queries, report.chains, report.skipped
        counts["relations"] = len(relations)
        counts["chains"] = len(chains)
    queries = list(queries)
    if not queries:
        raise PatchscopesError(
            "no two-hop query: no object of one relation is a subject of another"
            + (" with a matching type" if match_types else ""),
            hint="give relations that chain (e.g. product_by_company and company_ceo)"
            + ("; or allow any types" if match_types else ""),
        )
    counts["queries"] = len(queries)
    hops = pd.DataFrame(columns=["query_id", "hop", "prompt", "answer", "generated_text", "correct"])
    kept = queries
    if hop_filter:
        kept, known_counts, hops = filter_known(model, queries, max_new_tokens=max_new_tokens,
                                                options=options.with_(run_dir=store))
        counts.update(known_counts)
    used = kept
    if max_queries is not None and len(kept) > max_queries:
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
        used = [kept[i] for i in sorted(order[:max_queries])]
    counts["used"] = len(used)
    dev, test = split_queries(used, dev_fraction, seed=seed) if len(used) >= 2 else (list(used), [])
    split_of = {q.query_id: "dev" for q in dev} | {q.query_id: "test" for q in test}
    counts["dev"], counts["test"] = len(dev), len(test)

    rows: list[tuple] = []
    counts["control"] = 0
    if used:
        vanilla = generate_texts(model, [q.composed_prompt for q in used], max_new_tokens, run_dir=store)
        cot = generate_texts(model, [q.cot_prompt for q in used], cot_tokens, run_dir=store)
        for q, v, c in zip(used, vanilla, cot):
            rows.append(_row(q, "vanilla", split_of[q.query_id], None, None, v))
            rows.append(_row(q, "cot", split_of[q.query_id], None, None, c))
        pairs = [(sl, t) for sl in src_layers for t in tgt_layers]
        donors = control_donors(used, direction) if control else [None] * len(used)
        donor_of = {q.query_id: d for q, d in zip(used, donors)}
        counts["control"] = sum(d is not None for d in donors)
        total = len(used) * len(pairs) + counts["control"] * len(pairs)
        bar = tqdm(total=total, desc="multihop", unit="patch", disable=not options.progress)
        try:
            for first in range(0, len(used), queries_per_run):
                part = used[first: first + queries_per_run]
                keys = [(q, "patchscope", sl, t) for q in part for sl, t in pairs]
                keys += [(q, "control", sl, t) for q in part if donor_of[q.query_id] is not None for sl, t in pairs]
                scopes = [multihop_scope(q, sl, t, direction, max_new_tokens,
                                         donor=donor_of[q.query_id] if method == "control" else None)
                          for q, method, sl, t in keys]
                results = run(scopes, model, **options.with_(run_dir=store, progress=False).run_kwargs())
                for (q, method, sl, t), result in zip(keys, results):
                    rows.append(_row(q, method, split_of[q.query_id], sl, t, result.generated_text))
                bar.update(len(scopes))
        finally:
            bar.close()
    frame = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    frame["source_layer"] = frame["source_layer"].astype("Int64")
    frame["target_layer"] = frame["target_layer"].astype("Int64")
    frame.attrs.update(
        model=model.name, num_layers=model.num_layers, direction=direction, counts=counts,
        chains=[list(c) for c in chains], skipped=skipped, source_layers=src_layers, target_layers=tgt_layers,
        hops=hops.to_dict(orient="records"), seed=seed, dev_fraction=dev_fraction, max_new_tokens=max_new_tokens,
        cot_tokens=cot_tokens, cot_template=cot_template, engine=options.engine, hop_filter=hop_filter, control=control,
        queries=[q.to_record() for q in used], seconds=round(time.perf_counter() - start, 1),
    )
    return frame


def _row(q: TwoHopQuery, method: str, split: str, source_layer, target_layer, text: str | None) -> tuple:
    text = text or ""
    return (q.query_id, method, split, source_layer, target_layer, mentions(text, q.answer, q.answer_aliases), text,
            q.answer, q.relation1, q.relation2)


# -- scores -----------------------------------------------------------------------------------------------------
def pair_accuracy(samples: pd.DataFrame, split: str | None = None, method: str = "patchscope") -> pd.DataFrame:
    """Accuracy of each (l, l*) pair of ``method`` (``patchscope`` or ``control``): columns ``source_layer,
    target_layer, correct, n, accuracy``."""
    patch = samples[samples["method"] == method]
    if split is not None:
        patch = patch[patch["split"] == split]
    grouped = patch.groupby(["source_layer", "target_layer"])["correct"].agg(["sum", "size"]).reset_index()
    grouped.columns = ["source_layer", "target_layer", "correct", "n"]
    grouped["accuracy"] = grouped["correct"] / grouped["n"]
    return grouped


def choose_pair(samples: pd.DataFrame) -> tuple[int, int] | None:
    """The (l, l*) pair with the best patchscope accuracy on the development split, or ``None`` without
    development rows.

    Ties go to the pair whose 3×3 neighbourhood in the swept grid has the best mean development accuracy, then
    to the lowest (l, l*).
    """
    acc = pair_accuracy(samples, "dev")
    if acc.empty:
        return None
    src = sorted(acc["source_layer"].unique())
    tgt = sorted(acc["target_layer"].unique())
    grid = {(int(r.source_layer), int(r.target_layer)): float(r.accuracy) for r in acc.itertuples()}
    si = {sl: i for i, sl in enumerate(src)}
    ti = {t: i for i, t in enumerate(tgt)}

    def neighbourhood(sl: int, t: int) -> float:
        vals = [grid[(src[a], tgt[b])] for a in range(max(0, si[sl] - 1), min(len(src), si[sl] + 2))
                for b in range(max(0, ti[t] - 1), min(len(tgt), ti[t] + 2)) if (src[a], tgt[b]) in grid]
        return sum(vals) / len(vals)

    best = max(grid, key=lambda p: (grid[p], neighbourhood(*p), -p[0], -p[1]))
    return best


def summarize_multihop(samples: pd.DataFrame) -> pd.DataFrame:
    """The table: per method, the accuracy on all used queries and on the test split.

    Rows ``vanilla``, ``cot``, ``patchscope-oracle`` (correct if any pair yields the answer) and
    ``patchscope-heldout`` (the pair chosen on the development split, applied to the test split; its ``all``
    columns are empty); with control rows, also ``control-oracle`` and ``control-heldout`` (the same scores for
    the control, at the pair chosen for the patchscope). Columns ``method, correct, n, accuracy, test_correct,
    test_n, test_accuracy, source_layer, target_layer``. ``attrs`` adds ``chosen_pair`` and ``oracle_fixes``
    (queries the vanilla prompt gets wrong that some pair gets right, out of the vanilla failures), and with
    control rows ``control_fixes`` (the same for the control, out of the vanilla failures that have a donor).
    """
    records = []
    per_query = {}
    for method in ("vanilla", "cot"):
        per_query[method] = samples[samples["method"] == method].set_index("query_id")["correct"]
    sweeps = ["patchscope"] + (["control"] if (samples["method"] == "control").any() else [])
    for method in sweeps:
        per_query[f"{method}-oracle"] = samples[samples["method"] == method].groupby("query_id")["correct"].any()
    split = samples.drop_duplicates("query_id").set_index("query_id")["split"]
    test_ids = split.index[split == "test"]
    chosen = choose_pair(samples)
    for method in ("vanilla", "cot", *(f"{m}-{kind}" for m in sweeps for kind in ("oracle", "heldout"))):
        if method.endswith("-heldout"):
            rows = samples[samples["method"] == method.removesuffix("-heldout")]
            if chosen is None or not len(test_ids):
                records.append(_record(method, None, None, None, 0, chosen))
                continue
            at = rows[(rows["source_layer"] == chosen[0]) & (rows["target_layer"] == chosen[1])
                      & (rows["split"] == "test")]
            records.append(_record(method, None, None, int(at["correct"].sum()), len(at), chosen))
            continue
        correct = per_query[method].astype(bool)
        test = correct[correct.index.isin(test_ids)]
        records.append(_record(method, int(correct.sum()), len(correct), int(test.sum()), len(test), None))
    frame = pd.DataFrame(records)
    frame.attrs.update(samples.attrs)
    vanilla_wrong = per_query["vanilla"].index[~per_query["vanilla"].astype(bool)]
    oracle = per_query["patchscope-oracle"]
    frame.attrs["chosen_pair"] = list(chosen) if chosen is not None else None
    frame.attrs["oracle_fixes"] = [int(oracle.reindex(vanilla_wrong, fill_value=False).sum()), len(vanilla_wrong)]
    if "control-oracle" in per_query:
        control = per_query["control-oracle"]
        with_donor = vanilla_wrong[vanilla_wrong.isin(control.index)]
        frame.attrs["control_fixes"] = [int(control.reindex(with_donor, fill_value=False).sum()), len(with_donor)]
    return frame


def _record(method, correct, n, test_correct, test_n, pair) -> dict:
    return {
        "method": method, "correct": correct, "n": n,
        "accuracy": (correct / n) if n else None,
        "test_correct": test_correct, "test_n": test_n,
        "test_accuracy": (test_correct / test_n) if test_n else None,
        "source_layer": None if pair is None else int(pair[0]),
        "target_layer": None if pair is None else int(pair[1]),
    }


def evaluate_multihop(model: LanguageModel, relations: Sequence[object], **kwargs) -> pd.DataFrame:
    """The multi-hop experiment's table (see :func:`multihop_samples` and :func:`summarize_multihop`).

    Example:
        >>> from patchscopes.data.relations import load_relations
        >>> rels = load_relations(["relations/factual/product_by_company.json", "relations/factual/company_ceo.json"])
        >>> table = evaluate_multihop(model, rels, source_layers="0:30:3", target_layers="0:30:3")
    """
    return summarize_multihop(multihop_samples(model, relations, **kwargs))


def result_records(samples: pd.DataFrame, summary: pd.DataFrame) -> list[dict]:
    """Records for ``--json``: every sample row, plus per query a ``patchscope-oracle`` record (its layers are
    the first pair that yields the answer, empty if none) and, on the test split, a ``patchscope-heldout``
    record at the chosen pair (the same as ``control-oracle`` and ``control-heldout`` for control rows)."""
    records = []
    for rec in samples.to_dict(orient="records"):
        records.append({k: (None if v is pd.NA else v) for k, v in rec.items()})
    for method in ("patchscope", "control"):
        for query_id, group in samples[samples["method"] == method].groupby("query_id", sort=False):
            hits = group[group["correct"]]
            first = hits.iloc[0] if len(hits) else group.iloc[0]
            records.append({
                "query_id": query_id, "method": f"{method}-oracle", "split": first["split"],
                "source_layer": int(first["source_layer"]) if len(hits) else None,
                "target_layer": int(first["target_layer"]) if len(hits) else None,
                "correct": bool(len(hits)), "generated_text": first["generated_text"] if len(hits) else None,
                "answer": first["answer"], "relation1": first["relation1"], "relation2": first["relation2"],
            })
    chosen = summary.attrs.get("chosen_pair")
    if chosen is not None:
        at = samples[(samples["source_layer"] == chosen[0]) & (samples["target_layer"] == chosen[1])
                     & (samples["split"] == "test")]
        for rec in at.to_dict(orient="records"):
            rec = {k: (None if v is pd.NA else v) for k, v in rec.items()}
            rec["method"] = f"{rec['method']}-heldout"
            records.append(rec)
    for rec in records:
        for key in ("source_layer", "target_layer"):
            if rec.get(key) is not None:
                rec[key] = int(rec[key])
        rec["correct"] = bool(rec["correct"])
    return records


def multihop_figure(samples: pd.DataFrame, summary: pd.DataFrame | None = None, *, title: str | None = None):
    """Heatmaps of success over (l, l*): the share of queries whose generation contains the answer at each pair,
    for the patchscope and (where it was run) the control side by side, with the held-out pair marked.

    Returns:
        A plotly figure (save it with :func:`patchscopes.plots.save_figure`).

    Raises:
        PatchscopesError: There are no patchscope rows.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if pair_accuracy(samples).empty:
        raise PatchscopesError("no patchscope results to plot (no query was kept)")
    panels = [("patchscope", "CoT patchscope")]
    if (samples["method"] == "control").any():
        panels.append(("control", "control: another query's source"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[label for _, label in panels],
                        horizontal_spacing=0.08)
    chosen = summary.attrs.get("chosen_pair") if summary is not None else None
    for col, (method, label) in enumerate(panels, start=1):
        acc = pair_accuracy(samples, method=method)
        src = sorted(int(v) for v in acc["source_layer"].unique())
        tgt = sorted(int(v) for v in acc["target_layer"].unique())
        lookup = {(int(r.source_layer), int(r.target_layer)): r for r in acc.itertuples()}
        z = [[lookup[(sl, t)].accuracy if (sl, t) in lookup else None for sl in src] for t in tgt]
        text = [[f"{lookup[(sl, t)].correct}/{lookup[(sl, t)].n}" if (sl, t) in lookup else "" for sl in src]
                for t in tgt]
        fig.add_trace(go.Heatmap(
            x=[str(v) for v in src], y=[str(v) for v in tgt], z=z, text=text, texttemplate="%{text}",
            zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="success"), showscale=col == 1, name=label,
            hovertemplate=f"{label}<br>l=%{{x}} → l*=%{{y}}<br>%{{text}} queries (%{{z:.2f}})<extra></extra>",
        ), row=1, col=col)
        if chosen:
            fig.add_trace(go.Scatter(
                x=[str(chosen[0])], y=[str(chosen[1])], mode="markers", name="held-out pair (chosen on dev)",
                showlegend=col == 1, marker=dict(symbol="square-open", size=24, color="red", line=dict(width=3)),
            ), row=1, col=col)
        fig.update_xaxes(title_text="source layer l", row=1, col=col)
        fig.update_yaxes(title_text="target layer l*" if col == 1 else None, row=1, col=col)
    attrs = samples.attrs
    if title is None:
        title = (f"Multi-hop CoT patchscope · {attrs.get('model', '')} · {attrs.get('direction', '')} · "
                 f"{samples['query_id'].nunique()} queries")
        if summary is not None:
            by = {r["method"]: r for r in summary.to_dict(orient="records")}
            parts = [f"{m} {by[m]['accuracy']:.0%}" for m in ("vanilla", "cot", "patchscope-oracle", "control-oracle")
                     if m in by and by[m]["accuracy"] is not None]
            held = by.get("patchscope-heldout")
            if held and held["test_accuracy"] is not None:
                parts.append(f"held-out {held['test_accuracy']:.0%} (test, n={held['test_n']})")
            title += "<br><sub>" + " · ".join(parts) + "</sub>"
    fig.update_layout(title=title, template="plotly_white", width=660 * len(panels), height=640,
                      legend=dict(orientation="h", yanchor="top", y=-0.12, x=0.5, xanchor="center"))
    return fig
