"""``patchscopes eval next-token``: the paper's Experiment 1 on any causal LM.

Evaluates on the ``eval`` part of the text files (the documents a lens from ``patchscopes fit-lens`` on the
same files was not fitted on; documents a given lens saw are left out in any case), prints Precision@1 and
surprisal per layer and method, and writes ``--json`` records and a ``--plot`` figure.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import console, eval_app, wrote
from patchscopes.cli.lens_cmd import eval_documents
from patchscopes.data.text import DEFAULT_EVAL_FRACTION
from patchscopes.experiments.next_token import NEXT_TOKEN_METHODS, evaluate_next_token, next_token_figure
from patchscopes.lenses import Lens
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure
from patchscopes.storage import write_output_text


@eval_app.command("next-token", short_help="Exp. 1: next-token prediction from every layer.")
@opt.runtime_options()
@opt.run_options()
def next_token_command(
    text: opt.TextOption,
    model: opt.ModelOption = DEFAULT_MODEL,
    samples: Annotated[
        int, typer.Option("--samples", "-n", metavar="N", callback=opt.at_least(1),
                          help="Positions to sample (one per window).")
    ] = 2000,
    seed: opt.seed_option("the samples and random demonstrations") = 0,
    methods: opt.methods_option(f"Comma-separated or repeated: {', '.join(NEXT_TOKEN_METHODS)}, and "
                                "affine-lens / tuned-lens for each --lens.  [default: all]") = None,
    lens: Annotated[
        list[Path] | None,
        typer.Option("--lens", metavar="DIR", help="A lens folder from `patchscopes fit-lens` (repeatable)."),
    ] = None,
    layers: opt.layers_option("Source layers: 'all', '0,5,10', '0:30:2'.") = "all",
    max_tokens: opt.max_tokens_option("Documents are cut into windows of this many tokens.") = 64,
    demo_k: Annotated[
        int, typer.Option("--demo-k", metavar="N", callback=opt.at_least(1), help="Random demonstrations per prompt.")
    ] = 3,
    demo_sets: Annotated[
        int, typer.Option("--demo-sets", metavar="N", callback=opt.at_least(1), help="Random demonstration sets.")
    ] = 3,
    eval_fraction: opt.eval_fraction_option() = DEFAULT_EVAL_FRACTION,
    json_path: opt.json_option("the per-layer records") = None,
    plot: opt.PlotOption = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Precision@1 and surprisal of next-token prediction from every layer, per method (paper, Exp. 1).

    Examples:

    \b
      patchscopes eval next-token --text wiki.txt \\
          --lens lenses/smollm2-affine
      patchscopes eval next-token --text wiki.txt --samples 200 \\
          --methods logit-lens,token-identity --plot f.html
    """
    arguments = dict(locals())
    opt.check_output_paths(json_path, plot)
    method_list = opt.parse_methods(methods)
    eval_docs = eval_documents(text, eval_fraction)
    start = time.perf_counter()
    lm = runtime.load(model)
    lenses = [Lens.load(path, model=lm) for path in (lens or [])]
    store = runs.open("eval next-token", arguments, runtime, [lm])
    summary = evaluate_next_token(
        lm, eval_docs, samples=samples, seed=seed, methods=method_list, lenses=lenses, layers=layers,
        max_tokens=max_tokens, demo_k=demo_k, demo_sets=demo_sets, options=runtime.options(runs, store),
    )
    seconds = time.perf_counter() - start
    attrs = summary.attrs
    console.print(results_table(summary, title=f"next-token prediction · {lm.name}"))
    console.print(Text(
        f"{attrs['samples']} samples (one position per window of ≤{max_tokens} tokens) from {attrs['documents']} "
        f"eval documents, {attrs['windows']} windows; skipped: {attrs['skipped_short_windows']} windows too short, "
        f"{attrs['excluded_fit_documents']} documents a lens was fitted on; surprisal in nats; "
        f"{seconds:.0f} s", style="dim"), soft_wrap=True)
    if attrs["samples"] < samples:
        console.print(Text(f"only {attrs['samples']} of the {samples} samples asked for: there are no more windows",
                           style="yellow"), soft_wrap=True)
    if json_path is not None:
        write_records(summary, json_path, {"model": lm.name, "seconds": round(seconds, 1)})
        wrote("JSON", json_path)
    if plot is not None:
        save_figure(next_token_figure(summary), plot)
        wrote("figure", plot)


def write_records(summary: pd.DataFrame, path: Path, extra: dict) -> None:
    """Write the summary as a JSON list of records (NaN as null), each with ``extra`` fields added."""
    records = []
    for rec in summary.to_dict(orient="records"):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        records.append({**clean, **extra, "samples": summary.attrs.get("samples")})
    write_output_text(path, json.dumps(records, indent=1) + "\n", "the JSON")


def results_table(summary: pd.DataFrame, *, title: str | None = None) -> Table:
    """Layers as rows; per method, Precision@1 and surprisal (± spread across demonstration sets)."""
    table = Table(title=Text(title) if title else None, title_justify="left")
    table.add_column("layer", justify="right", style="bold", no_wrap=True, min_width=5)
    methods = list(dict.fromkeys(summary["method"]))
    for m in methods:
        table.add_column(Text(f"{m}\nP@1 · surprisal"), justify="right", no_wrap=True)
    by = {(r.method, r.layer): r for r in summary.itertuples()}
    for layer in sorted(summary["layer"].unique()):
        cells = [str(layer)]
        for m in methods:
            r = by.get((m, layer))
            if r is None:
                cells.append("")
                continue
            cell = f"{r.precision_at_1:.3f} · {r.surprisal:.2f}"
            if not math.isnan(r.precision_at_1_std):
                cell = f"{r.precision_at_1:.3f}±{r.precision_at_1_std:.3f} · {r.surprisal:.2f}"
            cells.append(cell)
        table.add_row(*cells)
    return table
