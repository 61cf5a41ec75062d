"""``patchscopes inspect``: sweep a prompt's hidden states through a preset and show what each one says.

The sweep itself is :func:`patchscopes.sweep`; this module checks the options before the model loads, prints
the layer × position table and writes the ``--json`` / ``--csv`` / ``--html`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, wrote
from patchscopes.engine import BatchBudget
from patchscopes.errors import PatchscopesError, check_text
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import heatmap, save_figure
from patchscopes.plots.tables import results_tables, table_legend
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


def _check_suffix(path: Path | None, option: str, suffixes: tuple[str, ...]) -> None:
    if path is not None and path.suffix.lower() not in suffixes:
        raise PatchscopesError(
            f"{option} {path}: the file name must end in {' or '.join(suffixes)}",
            hint=f"e.g. {option} {path.with_suffix(suffixes[0]).name}",
        )
