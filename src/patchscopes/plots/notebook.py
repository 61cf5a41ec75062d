"""A sweep in a notebook: ``ps.show(df)`` draws the interactive layer × position heatmap in Jupyter.

:func:`show` wraps :func:`patchscopes.plots.heatmap` in a :class:`HeatmapView`, an object with a rich HTML
representation: the last expression of a Jupyter cell (or ``display(ps.show(df))`` anywhere in one) draws it,
with plotly.js embedded so it works offline. Outside a notebook, :meth:`HeatmapView.save` writes it to a file.

    >>> df = ps.sweep(model, "The Eiffel Tower is in Paris", "token-identity")
    >>> ps.show(df)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from patchscopes.plots import heatmap, save_figure


class HeatmapView:
    """The heatmap of a sweep, drawn by Jupyter (or any front end that renders ``_repr_html_``).

    Attributes:
        figure: The plotly figure (:func:`patchscopes.plots.heatmap`).
        include_plotlyjs: How the HTML gets plotly.js: ``True`` embeds it (offline; about 4 MB per view),
            ``"cdn"`` loads it from the network, ``False`` assumes the page has it already.
        shape: (rows, columns) of the grid.
    """

    def __init__(self, figure, *, include_plotlyjs: bool | str = True, shape: tuple[int, int] = (0, 0)) -> None:
        self.figure = figure
        self.include_plotlyjs = include_plotlyjs
        self.shape = shape

    def _repr_html_(self) -> str:
        return self.figure.to_html(full_html=False, include_plotlyjs=self.include_plotlyjs,
                                   config={"displaylogo": False})

    def __repr__(self) -> str:
        title = self.figure.layout.title.text or "sweep"
        return f"<HeatmapView {title}: {self.shape[0]} rows × {self.shape[1]} positions>"

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
        A :class:`HeatmapView`; as the last expression of a cell, Jupyter draws it.

    Raises:
        PatchscopesError: The frame is empty or is not a sweep result.
    """
    figure = heatmap(frame, title=title, cell_width=cell_width, colorscale=colorscale)
    cells = figure.data[0]
    return HeatmapView(figure, include_plotlyjs=include_plotlyjs, shape=(len(cells.y), len(cells.x)))
