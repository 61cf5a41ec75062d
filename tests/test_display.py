"""``ps.show(df)``: the interactive heatmap of a sweep as a rich display object for Jupyter."""

from __future__ import annotations

import re
from html import escape

import pandas as pd
import pytest

import patchscopes as ps
from patchscopes.plots import cell_text

PROMPT = "Hi you"


def test_show_draws_the_sweep_heatmap_offline(tiny_llama, tmp_path):
    df = ps.sweep(tiny_llama, PROMPT, "token-identity", layers="0,2", positions="-3:", top_k=3)
    view = ps.show(df)
    assert isinstance(view, ps.HeatmapView)
    assert view.shape == (2, 3)
    html = view._repr_html_()
    assert "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js embedded: no network needed
    # every cell's top token is in the figure, as the heatmap shows it (escaped: plotly reads it as HTML)
    cells = view.figure.data[0]
    assert [list(row) for row in cells.text] == [
        [escape(cell_text(rec, 12)) for rec in df[df.source_layer == layer].to_dict("records")] for layer in (0, 2)
    ]
    assert "tiny-llama" in repr(view) and "2 rows × 3 positions" in repr(view)
    assert view.save(tmp_path / "heatmap.html").read_text(encoding="utf-8").count("Plotly.newPlot") == 1


def test_show_can_leave_plotly_to_the_page(tiny_llama):
    df = ps.sweep(tiny_llama, PROMPT, "logit-lens", layers="1", positions="1:3")
    light = ps.show(df, include_plotlyjs=False)._repr_html_()
    assert "Plotly.newPlot" in light and len(light) < len(ps.show(df)._repr_html_()) / 10


def test_show_refuses_what_is_not_a_sweep():
    with pytest.raises(ps.PatchscopesError, match="lacks the column"):
        ps.show(pd.DataFrame({"a": [1]}))
