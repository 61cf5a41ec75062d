"""``patchscopes models``: the embedded models, whether they are installed and converted, and the cache root."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from patchscopes.cli.app import app, console
from patchscopes.models import DEFAULT_MODEL, cache_dir, embedded_status


@app.command("models", short_help="List the embedded models and where they are cached.")
def models_command() -> None:
    """List the embedded models: installed or not, where their converted weights are cached, how to install.

    The cache root is $PATCHSCOPES_CACHE, by default ~/.cache/patchscopes.
    """
    rows = embedded_status()
    table = Table(title="Embedded models", title_justify="left", show_lines=False)
    table.add_column("alias", style="bold", no_wrap=True)
    table.add_column("description")
    table.add_column("installed", no_wrap=True)
    table.add_column("cached", overflow="fold")
    for row in rows:
        alias = Text(str(row["alias"]))
        if row["alias"] == DEFAULT_MODEL:
            alias.append(" (default)", style="dim")
        installed = Text("yes", style="green") if row["installed"] else Text("no", style="red")
        if not row["installed"]:
            cached = Text("-", style="dim")
        elif row["cached"]:
            cached = Text(str(row["cached"]))
        else:
            cached = Text("not converted yet (converted on first load)", style="yellow")
        table.add_row(alias, Text(str(row["description"])), installed, cached)
    console.print(table)

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
