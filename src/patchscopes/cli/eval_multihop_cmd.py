"""``patchscopes eval multihop``: the paper's multi-hop correction on any causal LM and any relation files.

Chains relation files into two-hop queries, keeps those whose hops the model answers alone, and compares the
vanilla composed prompt, a chain-of-thought prompt and the CoT patchscope over (l, l*) pairs (the oracle, as
the paper reports it, and an honest held-out score). Prints the counts at each filtering step and the table,
and writes ``--json`` records and a ``--plot`` (l, l*) heatmap.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import console, eval_app, layer_list, write_json, wrote
from patchscopes.data.relations import load_relations
from patchscopes.data.text import DATA_DIR_ENV
from patchscopes.data.two_hop import COT_TEMPLATE
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.multihop import (
    DIRECTIONS,
    multihop_figure,
    multihop_samples,
    result_records,
    summarize_multihop,
)
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure

PAPER_VICUNA_13B = {"vanilla": "19.57 (9/46)", "cot": "35.71", "patchscope-oracle": "50.00 (23/46)",
                    "patchscope-heldout": "–"}
"""The paper's figures (Vicuna-13B, 46 queries, %)."""

_LABELS = {"vanilla": "vanilla (composed prompt)", "cot": "chain of thought", "patchscope-oracle":
           "CoT patchscope, oracle (any (l, l*))", "patchscope-heldout": "CoT patchscope, held-out (l, l*)",
           "control-oracle": "control (another query's source), oracle", "control-heldout":
           "control (another query's source), held-out (l, l*)"}


def relation_paths(paths: list[Path]) -> list[Path]:
    """The relation paths to read: as given (relative ones also under ``$PATCHSCOPES_DATA_DIR``), or
    ``$PATCHSCOPES_DATA_DIR/relations`` when none is given.

    Raises:
        PatchscopesError: No path given and no data folder to fall back on.
    """
    root = os.environ.get(DATA_DIR_ENV)
    if not paths:
        if root and (Path(root) / "relations").is_dir():
            return [Path(root) / "relations"]
        raise PatchscopesError(
            "no relation files given",
            hint=f"give --relations FILE_OR_FOLDER... (the evandez/relations JSON schema), or set ${DATA_DIR_ENV} "
            "to a folder with a relations/ subfolder",
        )
    out = []
    for path in paths:
        if not path.exists() and root and not path.is_absolute() and (Path(root) / path).exists():
            path = Path(root) / path
        out.append(path)
    return out


@eval_app.command("multihop", short_help="Multi-hop correction with the CoT patchscope (§4.5).")
@opt.runtime_options()
@opt.run_options()
def multihop_command(
    relations: Annotated[
        list[Path] | None,
        typer.Option("--relations", "-r", metavar="PATH", show_default=False,
                     help="Relation files (.json, the evandez/relations schema) or folders of them; several may "
                     f"follow one --relations.  [default: ${DATA_DIR_ENV}/relations]"),
    ] = None,
    more_relations: opt.MoreRelationsArgument = None,
    model: opt.ModelOption = DEFAULT_MODEL,
    direction: Annotated[
        str, typer.Option("--direction", metavar="NAME", help="hop1-into-hop2 (the paper's text: hop 1's last "
                          "state into the composed prompt) or hop2-into-hop1 (the paper's code).")
    ] = "hop1-into-hop2",
    source_layers: Annotated[
        str | None, typer.Option("--source-layers", "-l", metavar="SPEC", show_default=False,
                                 help="Source layers l: 'all', '0,5,10', '0:30:3'.  [default: about 10 evenly "
                                 "spaced layers ending at the last]")
    ] = None,
    target_layers: Annotated[
        str | None, typer.Option("--target-layers", "-t", metavar="SPEC", show_default=False,
                                 help="Target layers l*.  [default: as --source-layers]")
    ] = None,
    max_queries: Annotated[
        int, typer.Option("--max-queries", "-n", metavar="N", callback=opt.at_least(0), help="Use at most this many "
                          "kept queries (a seeded sample; 0: all); each costs a generation per (l, l*).")
    ] = 60,
    max_per_chain: Annotated[
        int, typer.Option("--max-per-chain", metavar="N", callback=opt.at_least(0), help="Candidate queries per "
                          "relation pair (a seeded sample; 0: all); bounds the hop filter's cost.")
    ] = 0,
    any_types: Annotated[
        bool, typer.Option("--any-types", help="Chain relations whenever an object of one is a subject of the "
                           "other, even where hop 1's range is not hop 2's domain.")
    ] = False,
    hop_filter: Annotated[
        bool, typer.Option("--hop-filter/--no-hop-filter", help="Keep only the queries whose two hops the model "
                           "answers alone (within --max-new-tokens greedy tokens).")
    ] = True,
    control: Annotated[
        bool, typer.Option("--control/--no-control", help="Also run the sweep with the source taken from another "
                           "query (a wrong intermediate entity); doubles the cost.")
    ] = True,
    dev_fraction: Annotated[
        float, typer.Option("--dev-fraction", metavar="X", callback=opt.at_least(0.0, 1.0),
                            help="Share of the queries used to choose the held-out (l, l*) pair.")
    ] = 0.5,
    max_new_tokens: opt.max_new_tokens_option("Greedy tokens of the hop filter, the vanilla prompt and each patch.")
    = 20,
    cot_tokens: Annotated[
        int, typer.Option("--cot-tokens", metavar="N", callback=opt.at_least(1),
                          help="Greedy tokens of the chain-of-thought prompt.")
    ] = 40,
    cot_template: Annotated[
        str, typer.Option("--cot-template", metavar="TEXT", help="The chain-of-thought prompt; {composed} is the "
                          "composed prompt.")
    ] = COT_TEMPLATE,
    seed: opt.seed_option("the samples and of the dev/test split") = 0,
    json_path: opt.json_option() = None,
    plot: opt.plot_option("the (l, l*) heatmap") = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Multi-hop correction: vanilla, chain of thought and the CoT patchscope on two-hop queries (paper, §4.5).

    Examples:

    \b
      patchscopes eval multihop --relations \\
          data/relations/factual/food_from_country.json \\
          data/relations/factual/country_capital_city.json \\
          --json multihop.json --plot multihop.html
      patchscopes eval multihop --relations data/relations \\
          --direction hop2-into-hop1 -l 0:30:2 -t 0:30:2
    """
    arguments = dict(locals())
    if direction not in DIRECTIONS:
        raise PatchscopesError(f"unknown --direction {direction!r}", hint=f"use {' or '.join(DIRECTIONS)}")
    if not 0 < dev_fraction < 1:
        raise PatchscopesError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if "{composed}" not in cot_template:
        raise PatchscopesError(f"--cot-template {cot_template!r} has no {{composed}}",
                               hint=f"e.g. {COT_TEMPLATE!r}")
    opt.check_output_paths(json_path, plot)
    rels = load_relations(relation_paths([*(relations or []), *(more_relations or [])]))

    start = time.perf_counter()
    lm = runtime.load(model)
    store = runs.open("eval multihop", arguments, runtime, [lm], data=rels)
    samples = multihop_samples(
        lm, rels, direction=direction, source_layers=source_layers, target_layers=target_layers,  # type: ignore[arg-type]
        max_queries=max_queries or None, max_per_chain=max_per_chain or None, match_types=not any_types,
        hop_filter=hop_filter, control=control, dev_fraction=dev_fraction, seed=seed,
        max_new_tokens=max_new_tokens, cot_tokens=cot_tokens, cot_template=cot_template,  # type: ignore[arg-type]
        options=runtime.options(runs, store),
    )
    summary = summarize_multihop(samples)
    seconds = time.perf_counter() - start
    attrs = samples.attrs
    console.print(chains_table(samples))
    console.print(counts_text(attrs["counts"]), soft_wrap=True)
    console.print(summary_table(summary, title=f"multi-hop correction · {lm.name} · {direction}"))
    fixes = summary.attrs["oracle_fixes"]
    console.print(Text(
        f"source layers {layer_list(attrs['source_layers'])}; target layers {layer_list(attrs['target_layers'])}; "
        f"correct: the answer appears in {max_new_tokens} greedy tokens ({cot_tokens} for chain of thought); "
        f"the oracle fixes {fixes[0]} of the {fixes[1]} queries the vanilla prompt gets wrong"
        + (f" (the control's oracle {summary.attrs['control_fixes'][0]} of {summary.attrs['control_fixes'][1]})"
           if "control_fixes" in summary.attrs else "")
        + "; held-out: the "
        f"pair best on the dev split ({attrs['counts'].get('dev', 0)} queries) scored on the test split "
        f"({attrs['counts'].get('test', 0)}); {seconds:.0f} s", style="dim"), soft_wrap=True)
    if control and attrs["counts"].get("control", 0) < attrs["counts"].get("used", 0):
        console.print(Text(f"control: {attrs['counts'].get('control', 0)} of {attrs['counts'].get('used', 0)} "
                           "queries have another query to take a source from", style="dim"), soft_wrap=True)
    if attrs["counts"].get("used", 0) == 0:
        console.print(Text("no query survives the hop filter: the model answers no two-hop chain's hops alone",
                           style="yellow"), soft_wrap=True)
    if json_path is not None:
        extra = {"model": lm.name, "direction": direction}
        write_json([{**r, **extra} for r in result_records(samples, summary)], json_path)
        wrote("JSON", json_path)
    if plot is not None:
        if attrs["counts"].get("used", 0) == 0:
            console.print(Text("no figure: no query was kept", style="yellow"))
        else:
            save_figure(multihop_figure(samples, summary), plot)
            wrote("figure", plot)



def counts_text(counts: dict) -> Text:
    """The counts at each filtering step, on one line."""
    parts = []
    for key, label in (("relations", "relations"), ("chains", "chains"), ("queries", "two-hop queries"),
                       ("hop1_known", "hop 1 answered"), ("both_known", "both hops answered (kept)"),
                       ("used", "used"), ("dev", "dev"), ("test", "test")):
        if key in counts:
            parts.append(f"{label} {counts[key]}")
    return Text("filter: " + " → ".join(parts))


def chains_table(samples: pd.DataFrame) -> Table:
    """Per relation pair: candidate queries, and the kept ones."""
    attrs = samples.attrs
    kept = {}
    for q in attrs.get("queries", []):
        key = (q["relation1"], q["relation2"])
        kept[key] = kept.get(key, 0) + 1
    table = Table(title=Text("two-hop chains (hop 1 → hop 2)"), title_justify="left")
    for name, justify in (("hop 1", "left"), ("hop 2", "left"), ("queries", "right"), ("used", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rel1, rel2, n in attrs.get("chains", []):
        table.add_row(Text(rel1), Text(rel2), str(n), str(kept.get((rel1, rel2), 0)))
    return table


def summary_table(summary: pd.DataFrame, *, title: str | None = None) -> Table:
    """Methods as rows: accuracy on all used queries and on the test split, the held-out pair, and the paper's
    Vicuna-13B figure."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    for name in ("method", "all queries %", "test split %", "(l, l*)", "paper, Vicuna-13B %"):
        table.add_column(Text(name), justify="left" if name == "method" else "right")
    for r in summary.to_dict(orient="records"):
        pair = "" if r["source_layer"] is None or _nan(r["source_layer"]) else \
            f"({int(r['source_layer'])}, {int(r['target_layer'])})"
        table.add_row(Text(_LABELS.get(r["method"], r["method"])), _pct(r["correct"], r["n"]),
                      _pct(r["test_correct"], r["test_n"]), pair, PAPER_VICUNA_13B.get(r["method"], ""))
    return table


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _pct(correct, n) -> str:
    if correct is None or n is None or _nan(correct) or _nan(n) or not n:
        return "–"
    return f"{100 * correct / n:.1f} ({int(correct)}/{int(n)})"
