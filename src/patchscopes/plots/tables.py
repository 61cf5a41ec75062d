"""A sweep as text tables: layers × positions, each table as wide as the terminal.

:func:`results_tables` is what ``patchscopes inspect`` prints and what :func:`patchscopes.show` prints outside a
notebook; :func:`text_tables` renders them to a string.
"""

from __future__ import annotations

import io

import pandas as pd
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from patchscopes.plots import cell_probability, cell_text, grid, readout_legend


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


def text_tables(frame: pd.DataFrame, *, width: int = 100) -> str:
    """:func:`results_tables` of ``frame`` and its legend (:func:`table_legend`), rendered as plain text lines of
    at most ``width`` columns (box-drawing characters, no colour)."""
    console = Console(width=width, record=True, color_system=None, force_terminal=False, file=io.StringIO())
    for table in results_tables(frame, width=width):
        console.print(table)
    console.print(Text(table_legend(frame)))
    return console.export_text()
