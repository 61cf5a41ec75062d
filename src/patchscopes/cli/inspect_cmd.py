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
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, wrote
from patchscopes.engine import BatchBudget
from patchscopes.errors import PatchscopesError, check_text
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import cell_probability, cell_text, grid, heatmap, readout_legend, save_figure
from patchscopes.presets import PRESETS, get_preset
from patchscopes.results import save_results
from patchscopes.runs.memory import check_results_fit, memory_budget, parse_size
from patchscopes.specs import check_spec
from patchscopes.sweep import plan_sweep, sweep


@app.command("inspect", short_help="Read every hidden state of a prompt through a patchscope.")
@opt.runtime_options()
@opt.run_options()
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
        str, typer.Option("--positions", "-p", metavar="SPEC", help="Source token positions i: a SPEC as for "
                          "--layers, or words of PROMPT (Eiffel, or Eiffel,Tower: the last token of each).")
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
        int | None, typer.Option("--batch-rows", metavar="N", callback=opt.at_least(1), show_default=False,
                                 help="The most patches run in one forward pass.  [default: 256 on a CPU, "
                                 "4096 on a GPU]")
    ] = None,
    batch_tokens: Annotated[
        int | None, typer.Option("--batch-tokens", metavar="N", callback=opt.at_least(1), show_default=False,
                                 help="The most tokens (rows × tokens per row) in one forward pass.  [default: "
                                 "16384 on a CPU, 262144 on a GPU]")
    ] = None,
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", metavar="SIZE", show_default=False,
                                 help="The most memory the patches may take beyond the model (2GB, 500MB): "
                                 "source states, batches and results.  [default: no bound]")
    ] = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Patch each hidden state of PROMPT (layers × positions) into a target run and show what it reads.

    Rows are source layers, columns source tokens; a cell is the top token of the patched run.

    Examples:

    \b
      patchscopes inspect "The Eiffel Tower is in Paris" -l 0:30:5 -p -3:
      patchscopes inspect "Leonardo DiCaprio" --scope description \\
          --layers 0:10 --positions -1 --html out.html
    """
    arguments = dict(locals())
    # Check everything that does not need the model before loading it.
    if not prompt.strip():
        raise PatchscopesError("the prompt is empty", hint='give a source prompt, e.g. "The Eiffel Tower is in Paris"')
    check_text(prompt, "prompt")
    if target_prompt is not None:
        check_text(target_prompt, "target prompt")
    check_spec(layers, what="layer")  # the syntax now; the range once the model's size is known
    if target_layer is not None:
        check_spec(target_layer, what="target layer")
    source_positions = opt.position_spec(positions, prompt)
    get_preset(scope).with_options(target_prompt=target_prompt, top_k=top_k, max_new_tokens=max_new_tokens)
    _check_suffix(json_path, "--json", (".json",))
    _check_suffix(csv_path, "--csv", (".csv",))
    _check_suffix(html_path, "--html", (".html", ".htm"))
    memory = parse_size(max_memory) if max_memory is not None else None
    opt.check_output_paths(json_path, None, files={"--csv": csv_path, "--html": html_path})

    lm = runtime.load(model)
    budget = None if batch_rows is None and batch_tokens is None else BatchBudget(
        rows=batch_rows or BatchBudget.rows, tokens=batch_tokens or BatchBudget.tokens)  # default: the device's
    if memory is not None:  # a quarter for the source states held at once, a quarter per batch, half for results
        budget = memory_budget(memory, [lm], rows=batch_rows, tokens=batch_tokens)
        check_results_fit([s.readout for s in plan_sweep(
            lm, prompt, scope, layers=layers, positions=source_positions, target_layers=target_layer,
            target_prompt=target_prompt, top_k=top_k, max_new_tokens=max_new_tokens)], memory)
    store = runs.open("inspect", arguments, runtime, [lm])
    try:
        frame = sweep(
            lm, prompt, scope, layers=layers, positions=source_positions, target_layers=target_layer,
            target_prompt=target_prompt, top_k=top_k, max_new_tokens=max_new_tokens, baseline=baseline,
            engine=runtime.engine, progress=True, budget=budget, executor=runs.executor, run_dir=store,  # type: ignore[arg-type]
        )
    except torch.cuda.OutOfMemoryError as err:
        raise PatchscopesError(
            "the device ran out of memory during the sweep",
            hint="sweep fewer --layers/--positions, use --dtype bfloat16, or --device cpu",
        ) from err

    console.print(Text.assemble((f"{scope}", "bold"), f" · {lm.name} · {prompt!r}"))
    for table in results_tables(frame, width=console.width):
        console.print(table)
    console.print(Text(table_legend(frame), style="dim"))
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


def results_tables(frame: pd.DataFrame, *, width: int = 80, cell_width: int = 16) -> list[Table]:
    """Rich tables of a sweep, source layers (or ``l→l*``) by source positions, each at most ``width``
    columns wide: the positions are split over as many tables as it takes, every table repeating the
    layer column, so that no column is squeezed (a cell shows whole what :func:`cell_text` gives it).

    Cells show the visible top token (``␣`` for spaces, ``\\n`` for newlines) or, for generation readouts,
    the whole generated text, wrapped in a column of at most ``max(cell_width, 40)`` characters (less where the
    terminal is narrower); bold where its probability (for generation, the first token's) is at least 0.5,
    dim below 0.1. With baselines, a last row shows the unpatched run.
    """
    g = grid(frame)
    baseline = "baseline_top_tokens" in frame.columns and frame["baseline_top_tokens"].notna().any()
    headers = [Text("{}\n{}".format(*label.partition(":")[::2])) for label in g.col_labels]
    generation = "generated_text" in frame.columns and frame["generated_text"].map(lambda t: isinstance(t, str)).any()
    text_width = None if generation else cell_width  # generated texts whole, wrapped; tokens cut
    columns = []  # per position: its header and its cells, top to bottom
    for col, header in zip(g.col_keys, headers):
        cells = [Text("") if (rec := g.get(row, col)) is None else _cell(rec, text_width) for row in g.row_keys]
        if baseline:
            base = next((rec for (_, c), rec in g.cells.items()
                         if c == col and rec.get("baseline_top_tokens") is not None), None)
            cells.append(Text("") if base is None else Text(_baseline_text(base, text_width), style="italic"))
        columns.append((header, cells))
    row_labels = [Text(label) for label in g.row_labels] + ([Text("unpatched", style="italic")] if baseline else [])
    label_width = max(cell_len(t.plain) for t in [*row_labels, Text("l→l*" if g.multi_target else "layer")])
    # A wrapped column is at most this wide, and never wider than what one column beside the layers has.
    wrap_width = max(8, min(max(cell_width, 40), width - (1 + label_width + 3) - 3)) if generation else None

    def column_width(header: Text, cells: list[Text]) -> int:
        widest = max(cell_len(line) for t in [header, *cells] for line in (t.plain.split("\n") or [""]))
        return widest if wrap_width is None else min(widest, wrap_width)

    # A rich table with borders takes 1 + (content + 3) per column.
    chunks: list[list[int]] = [[]]
    used = 1 + label_width + 3
    for index, (header, cells) in enumerate(columns):
        need = column_width(header, cells) + 3
        if chunks[-1] and used + need > width:
            chunks.append([])
            used = 1 + label_width + 3
        chunks[-1].append(index)
        used += need
    tables = []
    for chunk in chunks:
        title = None
        if len(chunks) > 1:
            first, last = (g.col_labels[chunk[0]].partition(":")[0], g.col_labels[chunk[-1]].partition(":")[0])
            title = Text(f"positions {first}–{last}" if first != last else f"position {first}", style="dim")
        table = Table(title=title, title_justify="left")
        table.add_column("l→l*" if g.multi_target else "layer", justify="right", style="bold", no_wrap=True)
        for index in chunk:
            if wrap_width is None:
                table.add_column(columns[index][0], no_wrap=True, min_width=column_width(*columns[index]))
            else:
                table.add_column(columns[index][0], overflow="fold", width=column_width(*columns[index]))
        for r, label in enumerate(row_labels):
            if baseline and r == len(row_labels) - 1:
                table.add_section()
            table.add_row(label, *[columns[index][1][r] for index in chunk])
        tables.append(table)
    return tables


def table_legend(frame: pd.DataFrame) -> str:
    """What the cells of :func:`results_tables` show: :func:`~patchscopes.plots.readout_legend`, and the
    styles."""
    return f"{readout_legend(frame)}. Bold: p ≥ 0.5, dim: p < 0.1; ␣ = space."


def _cell(rec: dict, width: int | None) -> Text:
    prob = cell_probability(rec)
    style = "" if prob is None else "bold" if prob >= 0.5 else "dim" if prob < 0.1 else ""
    return Text(cell_text(rec, width), style=style)


def _baseline_text(rec: dict, width: int | None) -> str:
    generated = rec.get("baseline_description", rec.get("baseline_generated_text"))
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
