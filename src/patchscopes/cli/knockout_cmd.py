"""``patchscopes knockout``: attention knockout (Geva et al. 2023) of one prompt, as patchscopes.

The computation is :func:`patchscopes.experiments.attention_knockout.attention_knockout`; this module checks
the options before the model loads, prints the relative changes and writes ``--json`` / ``--plot``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console
from patchscopes.cli.trace_cmd import check_subject, write_outputs
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.attention_knockout import BLOCKED_SETS, attention_knockout
from patchscopes.models import DEFAULT_MODEL


@app.command("knockout", short_help="Attention knockout (Geva et al.) of one prompt.")
@opt.runtime_options()
def knockout_command(
    prompt: Annotated[str, typer.Argument(help="The prompt, e.g. 'The Eiffel Tower is located in the city of'.")],
    subject: Annotated[
        str, typer.Option("--subject", metavar="TEXT", help="The subject, as it appears in the prompt.")
    ],
    window: Annotated[int, typer.Option("--window", metavar="N", help="Consecutive layers blocked together.")] = 9,
    model: opt.ModelOption = DEFAULT_MODEL,
    json_path: opt.json_option("one record per (window start, blocked set)") = None,
    plot: opt.PlotOption = None,
    *,
    runtime: opt.Runtime,
) -> None:
    """Attention knockout: block the last position's attention to the subject, to the other tokens, or to
    itself, over a window of layers sliding across the model; report the relative change of p(prediction).

    Example:

    \b
      patchscopes knockout "The Eiffel Tower is located in the city of" \\
          --subject "The Eiffel Tower" --plot knockout.html
    """
    check_subject(prompt, subject)
    if window < 1:
        raise PatchscopesError(f"--window must be at least 1, got {window}")
    opt.check_output_paths(json_path, plot)
    lm = runtime.load(model)
    result = attention_knockout(lm, prompt, subject, window=window, options=runtime.options())
    console.print(Text.assemble(("attention knockout", "bold"), f" · {lm.name} · {prompt!r} · prediction "
                                f"{result.prediction!r} (p = {result.p_original:.4f}) · window {window}"),
                  soft_wrap=True)
    console.print(_table(result))
    write_outputs(result.records, result.figure, json_path, plot)


def _table(result) -> Table:
    table = Table(title="relative change of p(prediction), %", title_justify="left")
    table.add_column("layers", justify="right")
    changes: dict[int, dict[str, float]] = {}
    for r in result.records:
        changes.setdefault(r["layer"], {})[r["blocked"]] = r["relative_change"]
    present = [b for b in BLOCKED_SETS if any(b in c for c in changes.values())]
    for blocked in present:
        table.add_column(f"last → {blocked}", justify="right")
    for start, row in changes.items():
        layers = next(r["layers"] for r in result.records if r["layer"] == start)
        label = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        table.add_row(label, *(f"{100 * row[b]:+.1f}" if b in row else "" for b in present))
    return table
