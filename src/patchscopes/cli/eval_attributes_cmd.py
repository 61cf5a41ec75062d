"""``patchscopes eval attributes``: the paper's Experiment 2 (attribute extraction) on any causal LM.

Reads relation files (the ``evandez/relations`` JSON schema or the paper's preprocessed TSVs), keeps the
facts the model knows, runs the patchscope over source × target layers and the logistic-regression probe,
prints a table in the form of the paper's Table 2, and writes ``--json`` records and a ``--plot`` heatmap per
relation.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import console, eval_app, layer_list, write_json, wrote
from patchscopes.data.relations import CONTEXT_KINDS, attach_windows, load_relations
from patchscopes.data.text import DATA_DIR_ENV, read_documents
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.attributes import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_METHODS,
    DEFAULT_SOURCE_LAYERS,
    DEFAULT_TARGET_LAYERS,
    METHODS,
    AttributeResults,
    attributes_figure,
    evaluate_attributes,
)
from patchscopes.lenses.lre import DEFAULT_EXAMPLES
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure
from patchscopes.results import save_results


def parse_target_prompts(values: list[str] | None) -> dict[str, str] | None:
    """``KEY=PROMPT`` items (a relation key or name) into a dict; a bare ``PROMPT`` applies to all relations."""
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        key, sep, prompt = value.partition("=")
        if sep and key.strip() and "x" not in key.split():
            out[key.strip()] = prompt.strip()
        else:
            out["*"] = value.strip()
    return out


def default_windows() -> list[Path]:
    """``$PATCHSCOPES_DATA_DIR/patchscopes_preprocessed`` when it exists."""
    root = os.environ.get(DATA_DIR_ENV)
    if root and (Path(root) / "patchscopes_preprocessed").is_dir():
        return [Path(root) / "patchscopes_preprocessed"]
    return []


@eval_app.command("attributes", short_help="Exp. 2: attribute extraction, patchscope vs a linear probe.")
@opt.runtime_options()
@opt.run_options()
def attributes_command(
    relations: Annotated[
        list[Path],
        typer.Option("--relations", "-r", metavar="PATH", help="Relation files (.json in the relations schema, or "
                     "the paper's .tsv) or folders of them; several may follow one --relations."),
    ],
    more_relations: opt.MoreRelationsArgument = None,
    model: opt.ModelOption = DEFAULT_MODEL,
    source_layers: opt.layers_option("Source layers l: 'all', '0,5,10', '0:30:2', '::3'.", "--source-layers", "-l")
    = DEFAULT_SOURCE_LAYERS,
    target_layers: Annotated[
        str | None, typer.Option("--target-layers", "-t", metavar="SPEC", show_default=False,
                                 help="Target layers l*.  [default: every 3rd layer of the first half]")
    ] = DEFAULT_TARGET_LAYERS,
    max_samples: Annotated[
        int, typer.Option("--max-samples", "-n", metavar="N", callback=opt.at_least(0),
                          help="Known samples per relation for the patchscope (0: all).")
    ] = DEFAULT_MAX_SAMPLES,
    probe_samples: Annotated[
        int, typer.Option("--probe-samples", metavar="N", callback=opt.at_least(0),
                          help="Known samples per relation for the probe (0: all).")
    ] = 0,
    target_prompt: Annotated[
        list[str] | None,
        typer.Option("--target-prompt", metavar="[KEY=]PROMPT", show_default=False,
                     help="A target prompt with the placeholder x, for one relation (key or name) or all. "
                     "Repeatable.  [default: the paper's, else from the relation's first template]"),
    ] = None,
    windows: Annotated[
        list[Path] | None,
        typer.Option("--windows", metavar="PATH", show_default=False,
                     help="The paper's preprocessed TSVs (files or a folder): their WikiText windows become the "
                     f"source contexts of JSON relations of the same name.  [default: ${DATA_DIR_ENV}/"
                     "patchscopes_preprocessed if it exists]"),
    ] = None,
    corpus: Annotated[
        list[Path] | None,
        typer.Option("--corpus", metavar="FILE", help="Plain text files in which to find windows containing "
                     "each subject."),
    ] = None,
    contexts: Annotated[
        str, typer.Option("--contexts", metavar="LIST", help="Allowed source contexts in order of preference, "
                          "comma-separated: wikitext, corpus, template.")
    ] = ",".join(CONTEXT_KINDS),
    contexts_per_subject: Annotated[
        int, typer.Option("--contexts-per-subject", metavar="N", callback=opt.at_least(1),
                          help="The most source contexts per subject.")
    ] = 5,
    fact_filter: Annotated[
        bool, typer.Option("--fact-filter/--no-fact-filter", help="Keep only facts the model knows (the object "
                           "appears in the generated tokens of the verbalized prompt).")
    ] = True,
    max_new_tokens: opt.max_new_tokens_option("Tokens generated by the fact check and each patch.") = 20,
    folds: Annotated[
        int, typer.Option("--folds", metavar="N", callback=opt.at_least(2), help="Cross-validation folds of the probe.")
    ] = 3,
    probe_cv: Annotated[
        str, typer.Option("--probe-cv", metavar="KIND", help="Probe folds over 'subjects' (the probe is tested on "
                          "unseen subjects) or 'samples' (stratified by object).")
    ] = "subjects",
    seed: opt.seed_option("the sample selection and the folds") = 0,
    json_path: opt.json_option() = None,
    plot: opt.plot_option("a layer × layer heatmap per relation") = None,
    details: Annotated[
        Path | None, typer.Option("--details", metavar="FILE", help="Write every patched generation (.json, "
                                  ".csv or .parquet).")
    ] = None,
    methods: opt.methods_option("Methods, comma-separated: patchscope, probe, lre (the LRE attribute lens of "
                                "Hernandez et al., with its faithfulness).  [default: patchscope,probe]") = None,
    lre_examples: Annotated[
        int, typer.Option("--lre-examples", metavar="N", callback=opt.at_least(2),
                          help="In-context examples per LRE (the paper: 8).")
    ] = DEFAULT_EXAMPLES,
    lre_beta: Annotated[
        float | None, typer.Option("--lre-beta", metavar="B", show_default=False,
                                   callback=opt.at_least(0.0, strict=True),
                                   help="β of the LREs.  [default: chosen on the fitting examples]")
    ] = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Attribute extraction: the patchscope against a linear probe, per relation (paper, Exp. 2, Table 2).

    Examples:

    \b
      patchscopes eval attributes \\
          --relations data/patchscopes_preprocessed/factual/country_currency.tsv
      patchscopes eval attributes --relations data/relations/factual/*.json \\
          --corpus wiki.txt --json attributes.json --plot attributes.html
    """
    arguments = dict(locals())
    method_list = opt.parse_methods(methods) or list(DEFAULT_METHODS)
    bad = [m for m in method_list if m not in METHODS]
    if bad:
        raise PatchscopesError(f"unknown --methods {', '.join(bad)}", hint=f"use some of {', '.join(METHODS)}")
    if lre_beta is not None and not lre_beta > 0:
        raise PatchscopesError(f"--lre-beta must be positive, got {lre_beta}")
    if probe_cv not in ("samples", "subjects"):
        raise PatchscopesError(f"unknown --probe-cv {probe_cv!r}", hint="use samples or subjects")
    opt.check_output_paths(json_path, plot)
    if details is not None and details.suffix.lower() not in (".json", ".csv", ".parquet", ".pq"):
        raise PatchscopesError(f"--details {details}: the file name must end in .json, .csv or .parquet")
    opt.check_output_paths(None, None, files={"--details": details})
    kinds = [k.strip() for k in contexts.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in CONTEXT_KINDS]
    if unknown or not kinds:
        raise PatchscopesError(f"unknown --contexts {', '.join(unknown) or '(none)'}",
                               hint=f"use some of {', '.join(CONTEXT_KINDS)}")
    rels = load_relations([*relations, *(more_relations or [])])
    window_paths = windows if windows else default_windows()
    if window_paths and "wikitext" in kinds:
        attach_windows(rels, window_paths)
    documents = read_documents(corpus) if corpus else None
    if "corpus" in kinds and corpus and documents is not None and not len(documents):
        raise PatchscopesError("the --corpus files hold no text")
    prompts = parse_target_prompts(target_prompt)

    start = time.perf_counter()
    lm = runtime.load(model)
    store = runs.open("eval attributes", arguments, runtime, [lm], data=[rels, window_paths])
    results = evaluate_attributes(
        lm, rels, target_prompts=prompts, source_layers=source_layers, target_layers=target_layers,
        max_samples=max_samples or None, probe_samples=probe_samples or None, contexts=kinds,
        corpus=list(documents) if documents is not None else None, contexts_per_subject=contexts_per_subject,
        max_new_tokens=max_new_tokens, fact_filter=fact_filter, folds=folds, probe_cv=probe_cv,  # type: ignore[arg-type]
        seed=seed, options=runtime.options(runs, store),
        methods=method_list, lre_examples=lre_examples, lre_beta=lre_beta,
    )
    seconds = time.perf_counter() - start
    console.print(counts_table(results))
    console.print(summary_table(results, title=f"attribute extraction · {lm.name}"))
    attrs = results.attrs
    console.print(Text(
        f"source layers {layer_list(attrs['source_layers'])}, target layers {layer_list(attrs['target_layers'])}; "
        f"patchscope: correct if the object appears in {max_new_tokens} generated tokens for some target layer, "
        f"mean ± std over source layers; probe: {folds}-fold logistic regression over {probe_cv}, mean ± std over "
        "the same layers; winner by paired t-test over layers, Bonferroni-corrected (p < 0.05); "
        + ("LRE: the attribute lens (T = S, l* = L-1) correct if its top token starts the object, mean ± std over "
           "source layers; faithful: its top token equals the model's own on the in-context prompt (mean over "
           "layers · best layer); " if "lre" in method_list else "") +
        f"{seconds:.0f} s", style="dim"), soft_wrap=True)
    if json_path is not None:
        extra = {"model": lm.name, "seconds": round(seconds, 1)}
        write_json([{**r, **extra} for r in results.records()], json_path)
        wrote("JSON", json_path)
    if plot is not None:
        if results.patchscope.empty and results.lre.empty:
            console.print(Text("no figure: no relation has a known sample", style="yellow"))
        else:
            save_figure(attributes_figure(results), plot)
            wrote("figure", plot)
    if details is not None:
        frame = results.patchscope.merge(results.samples, on=["relation", "sample"], how="left")
        save_results(frame, details)
        wrote("details", details)



def _pm(mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def counts_table(results: AttributeResults) -> Table:
    """Per relation: facts, contexts, facts and samples the model knows, samples used by each method."""
    table = Table(title=Text("samples per relation (the knows-the-fact filter)"), title_justify="left")
    for name, justify in (("relation", "left"), ("target prompt", "left"), ("facts", "right"),
                          ("contexts", "right"), ("known facts", "right"), ("known samples", "right"),
                          ("probe", "right"), ("patchscope", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results.counts.itertuples():
        kinds = ", ".join(f"{getattr(r, f'contexts_{k}')} {k}" for k in CONTEXT_KINDS if getattr(r, f"contexts_{k}"))
        table.add_row(Text(r.relation), Text(r.target_prompt), str(r.facts),
                      Text(f"{r.samples_found} ({kinds or 'none'})"),
                      f"{r.facts_known}/{r.facts_with_context}", str(r.samples_known), str(r.probe_samples),
                      str(r.patchscope_samples))
    return table


def summary_table(results: AttributeResults, *, title: str | None = None) -> Table:
    """The paper's Table 2: per relation, samples (patchscope / probe), classes, the majority-class share,
    probe and patchscope (mean ± std over layers, %), the significance, and the paper's GPT-J figures."""
    summary = results.summary()
    table = Table(title=Text(title) if title else None, title_justify="left")
    for name, justify in (("relation", "left"), ("samples", "right"), ("classes", "right"),
                          ("majority %", "right"), ("probe %", "right"), ("patchscope %", "right"),
                          ("p (Bonferroni)", "right"),
                          ("significant", "left"), ("paper GPT-J\nprobe · patchscope", "right")):
        table.add_column(Text(name), justify=justify)  # type: ignore[arg-type]
    with_lre = not results.lre.empty or not results.faithfulness.empty
    if with_lre:
        table.add_column(Text("LRE %"), justify="right")
        table.add_column(Text("faithful %\nmean · best (layer)"), justify="right")
    for r in summary.itertuples():
        winner = {"patchscope": "patchscope ✓", "probe": "probe ✓", "tie": "tie", "n/a": "–"}[r.winner]
        paper = "" if math.isnan(r.paper_probe) else f"{r.paper_probe:.1f} · {r.paper_patchscope:.1f}"
        p = "–" if math.isnan(r.p_bonferroni) else f"{r.p_bonferroni:.2g}"
        majority = "–" if math.isnan(r.majority) else f"{100 * r.majority:.1f}"
        cells = [Text(r.relation), f"{r.samples} / {r.probe_samples}", str(r.classes), majority,
                 _pm(r.probe_mean, r.probe_std), _pm(r.patchscope_mean, r.patchscope_std), p, winner, paper]
        if with_lre:
            faith = ("–" if math.isnan(r.lre_faithfulness) else
                     f"{100 * r.lre_faithfulness:.1f} · {100 * r.lre_faithfulness_best:.1f} ({r.lre_best_layer})")
            cells += [_pm(r.lre_mean, r.lre_std), faith]
        table.add_row(*cells)
    return table
