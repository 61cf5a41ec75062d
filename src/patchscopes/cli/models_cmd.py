"""``patchscopes models``: the embedded models, whether they are installed and converted, and the cache root;
with ``--families``, the coverage matrix of every causal-LM family of transformers."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli.app import app, console
from patchscopes.models import DEFAULT_MODEL, cache_dir, embedded_status
from patchscopes.testing.coverage import STATUSES, load_coverage

_STATUS_STYLE = {"fast path": "green", "hooked": "yellow", "refused": "red", "not built": "dim", "fails": "bold red"}


# Below this many columns the families table leaves out the class column, so that "why" keeps room to wrap in.
FAMILIES_CLASS_WIDTH = 130


def print_families() -> None:
    """The stored coverage matrix: one row per family, then the count of each status. On a terminal narrower
    than :data:`FAMILIES_CLASS_WIDTH` the class column is left out (it is the family's ``*ForCausalLM``), and the
    layout or reason wraps in the room left."""
    version, rows = load_coverage()
    with_class = console.width >= FAMILIES_CLASS_WIDTH
    table = Table(title=f"Model families of transformers {version} (docs/models.md)", title_justify="left")
    table.add_column("model_type", style="bold", no_wrap=True)
    if with_class:
        table.add_column("class", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=max(len(s) for s in _STATUS_STYLE))
    table.add_column("layout / why", overflow="fold", ratio=1)
    for row in rows:
        why = row.detail if row.status != "fast path" else row.layout
        status = Text(row.status, style=_STATUS_STYLE[row.status])
        table.add_row(row.model_type, *([row.model_class] if with_class else []), status, why)
    console.print(table)
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in STATUSES)
    console.print(Text.assemble(("families: ", "bold"), counts), soft_wrap=True)


@app.command("models", short_help="List the embedded models, or with --families every family and how it runs.")
def models_command(
    families: bool = typer.Option(
        False, "--families", help="Print the coverage matrix: every causal-LM family of transformers, how it runs."
    ),
) -> None:
    """List the embedded models: installed or not, where their converted weights are cached, how to install.

    The cache root is $PATCHSCOPES_CACHE, by default ~/.cache/patchscopes. With --families, print instead
    which model families load and how they run (fast path, hooked fallback, refused and why).
    """
    if families:
        print_families()
        return
    rows = embedded_status()
    # The cache folders are long paths: listed below the table, one a line, rather than folded in a column.
    table = Table(title="Embedded models", title_justify="left", show_lines=False)
    table.add_column("alias", style="bold", no_wrap=True)
    table.add_column("installed", no_wrap=True)
    table.add_column("converted", no_wrap=True)
    table.add_column("description", ratio=1)
    for row in rows:
        alias = Text(str(row["alias"]))
        if row["alias"] == DEFAULT_MODEL:
            alias.append(" (default)", style="dim")
        installed = Text("yes", style="green") if row["installed"] else Text("no", style="red")
        if not row["installed"]:
            cached = Text("-", style="dim")
        elif row["cached"]:
            cached = Text("yes", style="green")
        else:
            cached = Text("not yet", style="yellow")
        table.add_row(alias, installed, cached, Text(str(row["description"])))
    console.print(table)
    converted = [row for row in rows if row["installed"] and row["cached"]]
    waiting = [row for row in rows if row["installed"] and not row["cached"]]
    if converted:
        console.print(Text("Converted weights (safetensors):", style="bold"))
        for row in converted:
            console.print(Text.assemble("  ", (str(row["alias"]), "bold"), ":"))
            console.print(Text(f"    {row['cached']}"), soft_wrap=True)
    for row in waiting:
        console.print(Text.assemble((str(row["alias"]), "bold"), ": not converted yet (converted on first load)"),
                      soft_wrap=True)

    missing = [row for row in rows if not row["installed"]]
    if missing:
        console.print()
        console.print(Text("To install:", style="bold"))
        for row in missing:
            console.print(Text.assemble("  ", (str(row["alias"]), "bold"), ": ", str(row["install"])), soft_wrap=True)
    root = cache_dir()
    console.print()
    console.print(
        Text.assemble(("cache root: ", "bold"), str(root), (" (set PATCHSCOPES_CACHE to move it)", "dim")),
        soft_wrap=True,
    )
