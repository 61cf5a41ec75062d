"""A sweep in a notebook: ``ps.show(df)`` draws the interactive layer × position heatmap in Jupyter.

:func:`show` wraps :func:`patchscopes.plots.heatmap` in a :class:`HeatmapView`, an object with a rich HTML
representation: the last expression of a Jupyter cell (or ``display(ps.show(df))`` anywhere in one) draws it,
with plotly.js embedded so it works offline (``pip install 'patchscopes[notebook]'`` installs Jupyter).
Outside a notebook (a terminal, a script), :func:`show` prints the sweep as text tables instead, as
``patchscopes inspect`` does, and :meth:`HeatmapView.save` writes the heatmap to a file.

    >>> df = ps.sweep(model, "The Eiffel Tower is in Paris", "token-identity")
    >>> ps.show(df)
"""

from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from patchscopes.plots import heatmap, save_figure
from patchscopes.plots.tables import text_tables


class HeatmapView:
    """The heatmap of a sweep, drawn by Jupyter (or any front end that renders ``_repr_html_``).

    Attributes:
        figure: The plotly figure (:func:`patchscopes.plots.heatmap`).
        include_plotlyjs: How the HTML gets plotly.js: ``True`` embeds it (offline; about 4 MB per view),
            ``"cdn"`` loads it from the network, ``False`` assumes the page has it already.
        shape: (rows, columns) of the grid.
        text: The sweep as text tables (what :func:`show` prints outside a notebook; also ``str(view)``).
    """

    def __init__(self, figure, *, include_plotlyjs: bool | str = True, shape: tuple[int, int] = (0, 0),
                 text: str = "") -> None:
        self.figure = figure
        self.include_plotlyjs = include_plotlyjs
        self.shape = shape
        self.text = text

    def __str__(self) -> str:
        return self.text or repr(self)

    def _repr_html_(self) -> str:
        return self.figure.to_html(full_html=False, include_plotlyjs=self.include_plotlyjs,
                                   config={"displaylogo": False})

    @property
    def title(self) -> str:
        """The figure's title as plain text: its first line, without HTML tags or entities."""
        return plain_title(self.figure.layout.title.text)

    def __repr__(self) -> str:
        return f"<HeatmapView {self.title}: {self.shape[0]} rows × {self.shape[1]} positions>"

    def save(self, path: str | Path) -> Path:
        """Write the heatmap to a self-contained ``.html`` file (or an image, with kaleido); returns the path."""
        return save_figure(self.figure, path)


def show(
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    cell_width: int = 12,
    colorscale: str = "Blues",
    include_plotlyjs: bool | str = True,
) -> HeatmapView:
    """The interactive heatmap of a sweep, for Jupyter: layers × positions, top token per cell, hover for top-k.

    Args:
        frame: The DataFrame :func:`patchscopes.sweep` returns (or :func:`patchscopes.load_results` reads).
        title: The figure's title; by default the scope, model and prompt.
        cell_width: The most characters written in a cell.
        colorscale: A plotly colour scale name.
        include_plotlyjs: See :class:`HeatmapView`; the default embeds plotly.js (works offline).

    Returns:
        A :class:`HeatmapView`; as the last expression of a cell, Jupyter draws it. Outside a notebook the
        sweep is printed as text tables (as wide as the terminal) before it is returned.

    Raises:
        PatchscopesError: The frame is empty or is not a sweep result.
    """
    figure = heatmap(frame, title=title, cell_width=cell_width, colorscale=colorscale)
    cells = figure.data[0]
    text = text_tables(frame, width=shutil.get_terminal_size((100, 24)).columns)
    view = HeatmapView(figure, include_plotlyjs=include_plotlyjs, shape=(len(cells.y), len(cells.x)), text=text)
    if not in_notebook():
        print(f"{view.title}\n{text}", end="")
        print("(a Jupyter notebook draws the interactive heatmap: pip install 'patchscopes[notebook]'; "
              "view.save('heatmap.html') writes it to a file)")
    return view


def plain_title(title: str | None) -> str:
    """The first line of a plotly title (HTML: ``<br>`` between lines, entities for quotes) as plain text."""
    first = re.split(r"<br\s*/?>", title or "", maxsplit=1)[0]
    return html.unescape(re.sub(r"<[^>]*>", "", first)).strip() or "sweep"


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a front end that draws HTML), not a terminal, an IPython shell
    in a terminal, or a script."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None
