"""``patchscopes inspect``: sweep a prompt's hidden states through a preset and show what each one says.

The sweep itself is :func:`patchscopes.sweep`; this module checks the options before the model loads, prints
the layer × position table and writes the ``--json`` / ``--csv`` / ``--html`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import torch
import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, wrote
from patchscopes.engine import BatchBudget
from patchscopes.errors import PatchscopesError
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import cell_probability, cell_text, grid, heatmap, save_figure
from patchscopes.presets import PRESETS, get_preset
from patchscopes.results import save_results
from patchscopes.sweep import sweep


@app.command("inspect", short_help="Read every hidden state of a prompt through a patchscope.")
@opt.runtime_options()
def inspect_command(
    prompt: Annotated[
        str, typer.Argument(metavar="PROMPT", show_default=False, help="The source prompt S whose hidden states are "
                            "read.")
    ],
    model: opt.ModelOption = DEFAULT_MODEL,
    scope: Annotated[
        str, typer.Option("--scope", "-s", metavar="NAME", help=f"The preset: {', '.join(PRESETS)}.")
    ] = "token-identity",
    target_prompt: Annotated[
        str | None,
        typer.Option("--target-prompt", "-t", metavar="TEXT", help="Replace the preset's target prompt T (for "
                     "description it must contain the placeholder x, which is patched)."),
    ] = None,
    layers: opt.layers_option(f"Source layers l: {opt.SPEC_HELP}.") = "all",
    positions: Annotated[
        str, typer.Option("--positions", "-p", metavar="SPEC", help="Source token positions i (a SPEC as for "
                          "--layers).")
    ] = "all",
    target_layer: opt.layers_option("Target layers l* (a SPEC); several give rows l→l*.  [default: the preset's: "
                                "l* = l, or the last layer for logit-lens]", "--target-layer", optional=True) = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", metavar="N", callback=opt.at_least(1), show_default=False,
                     help="Generate this many tokens (turns a next-token preset into generation).  [default: 20 "
                     "for description, else none]"),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", metavar="N", callback=opt.at_least(1), show_default=False,
                                 help="How many top tokens to keep per patch.  [default: 10]")
    ] = None,
    json_path: opt.json_option("the results as records") = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", metavar="FILE", help="Write the results here (.csv).")]
    = None,
    html_path: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE", help="Write an interactive heatmap here (one self-contained HTML "
                     "file, works offline)."),
    ] = None,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also run each target unpatched and show it.")
    ] = False,
    batch_rows: Annotated[
        int, typer.Option("--batch-rows", metavar="N", callback=opt.at_least(1),
                          help="The most patches run in one forward pass.")
    ] = BatchBudget.rows,
    batch_tokens: Annotated[
        int, typer.Option("--batch-tokens", metavar="N", callback=opt.at_least(1),
                          help="The most tokens (rows × tokens per row) in one forward pass.")
    ] = BatchBudget.tokens,
    *,
    runtime: opt.Runtime,
) -> None:
    """Patch each hidden state of PROMPT (layers × positions) into a target run and show what it reads.

    Rows are source layers, columns source tokens; a cell is the top token of the patched run.

    Examples:

    \b
      patchscopes inspect "The Eiffel Tower is in Paris" -l 0:30:5 -p -3:
      patchscopes inspect "Leonardo DiCaprio" --scope description \\
          --layers 0:10 --positions -1 --html out.html
    """
    # Check everything that does not need the model before loading it.
    if not prompt.strip():
        raise PatchscopesError("the prompt is empty", hint='give a source prompt, e.g. "The Eiffel Tower is in Paris"')
    get_preset(scope).with_options(target_prompt=target_prompt, top_k=top_k, max_new_tokens=max_new_tokens)
    _check_suffix(json_path, "--json", (".json",))
    _check_suffix(csv_path, "--csv", (".csv",))
    _check_suffix(html_path, "--html", (".html", ".htm"))

    lm = runtime.load(model)
    try:
        frame = sweep(
            lm, prompt, scope, layers=layers, positions=positions, target_layers=target_layer,
            target_prompt=target_prompt, top_k=top_k, max_new_tokens=max_new_tokens, baseline=baseline,
            engine=runtime.engine, progress=True, budget=BatchBudget(rows=batch_rows, tokens=batch_tokens),  # type: ignore[arg-type]
        )
    except torch.cuda.OutOfMemoryError as err:
        raise PatchscopesError(
            "the device ran out of memory during the sweep",
            hint="sweep fewer --layers/--positions, use --dtype bfloat16, or --device cpu",
        ) from err

    console.print(Text.assemble((f"{scope}", "bold"), f" · {lm.name} · {prompt!r}"), soft_wrap=True)
    console.print(results_table(frame))
    console.print(Text(table_legend(frame), style="dim"), soft_wrap=True)
    written = []
    for path, kind in ((json_path, "JSON"), (csv_path, "CSV")):
        if path is not None:
            try:
                written.append((kind, save_results(frame, path)))
            except OSError as err:
                raise PatchscopesError(f"could not write {path}: {err.strerror or err}") from err
    if html_path is not None:
        written.append(("heatmap", save_figure(heatmap(frame), html_path)))
    for kind, path in written:
        wrote(kind, path)


def results_table(frame: pd.DataFrame, *, title: str | None = None, cell_width: int = 16) -> Table:
    """A rich table of a sweep: source layers (or ``l→l*``) by source positions, the top token in each cell.

    Cells show the visible top token (``␣`` for spaces, ``\\n`` for newlines) or, for generation readouts,
    the generated text shortened to ``cell_width``; bold where its probability (for generation, the first
    token's) is at least 0.5, dim below 0.1. With baselines, a last row shows the unpatched run.
    """
    g = grid(frame)
    table = Table(title=Text(title) if title else None, title_justify="left")
    table.add_column("l→l*" if g.multi_target else "layer", justify="right", style="bold", no_wrap=True)
    for label in g.col_labels:
        index, _, token = label.partition(":")
        table.add_column(Text(f"{index}\n{token}"), no_wrap=True, overflow="ellipsis")
    for row, row_label in zip(g.row_keys, g.row_labels):
        cells: list[Text] = [Text(row_label)]
        for col in g.col_keys:
            rec = g.get(row, col)
            cells.append(Text("") if rec is None else _cell(rec, cell_width))
        table.add_row(*cells)

    if "baseline_top_tokens" in frame.columns and frame["baseline_top_tokens"].notna().any():
        baseline_cells: list[Text] = [Text("unpatched", style="italic")]
        for col in g.col_keys:
            base = next((rec for (_, c), rec in g.cells.items()
                         if c == col and rec.get("baseline_top_tokens") is not None), None)
            baseline_cells.append(Text("") if base is None else Text(_baseline_text(base, cell_width), style="italic"))
        table.add_section()
        table.add_row(*baseline_cells)
    return table


def table_legend(frame: pd.DataFrame) -> str:
    """One line saying what the cells of :func:`results_table` show."""
    generation = "generated_text" in frame.columns and frame["generated_text"].map(lambda v: isinstance(v, str)).any()
    what = "generated text (colour: first token)" if generation else "top token"
    return f"cell: {what} of the patched run; bold: p ≥ 0.5, dim: p < 0.1; ␣ = space"


def _cell(rec: dict, width: int) -> Text:
    prob = cell_probability(rec)
    style = "" if prob is None else "bold" if prob >= 0.5 else "dim" if prob < 0.1 else ""
    return Text(cell_text(rec, width), style=style)


def _baseline_text(rec: dict, width: int) -> str:
    generated = rec.get("baseline_generated_text")
    if isinstance(generated, str):
        return cell_text({"generated_text": generated}, width)
    tokens = rec.get("baseline_top_tokens")
    return cell_text({"top_token": tokens[0] if tokens is not None and len(tokens) else ""}, width)


def _check_suffix(path: Path | None, option: str, suffixes: tuple[str, ...]) -> None:
    if path is not None and path.suffix.lower() not in suffixes:
        raise PatchscopesError(
            f"{option} {path}: the file name must end in {' or '.join(suffixes)}",
            hint=f"e.g. {option} {path.with_suffix(suffixes[0]).name}",
        )
