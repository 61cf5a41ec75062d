"""The heatmap figure and its helpers (patchscopes.plots)."""

from __future__ import annotations

import html
import importlib.util
import re

import pandas as pd
import plotly.graph_objects as go
import pytest

import patchscopes
from patchscopes.errors import PatchscopesError
from patchscopes.plots import (
    cell_probability,
    cell_text,
    grid,
    heatmap,
    readout_legend,
    save_figure,
    shorten,
    show_token,
)


def _row(layer, position, token, top, probs, *, target_layer=None, generated=None, generated_ids=None,
         prompt="The Eiffel Tower"):
    return {
        "scope": "token-identity", "source_model": "m", "source_prompt": prompt,
        "source_layer": layer, "source_position": position, "source_token": token,
        "target_layer": layer if target_layer is None else target_layer, "target_position": 9,
        "top_token": top[0], "top_tokens": list(top), "top_token_ids": list(range(100, 100 + len(top))),
        "top_probs": list(probs), "top_prob": probs[0],
        "generated_text": generated, "generated_token_ids": generated_ids,
    }


@pytest.fixture
def frame():
    """2 layers × 2 positions, next-token readout."""
    return pd.DataFrame([
        _row(0, 2, " Eiffel", [" the", " a"], [0.6, 0.2]),
        _row(0, 3, " Tower", ["\n", " of"], [0.3, 0.1]),
        _row(4, 2, " Eiffel", [" Paris", " France"], [0.9, 0.05]),
        _row(4, 3, " Tower", ["<b>", "x"], [0.05, 0.01]),
    ])


def test_show_token_makes_whitespace_and_controls_visible():
    assert show_token(" Paris") == "␣Paris"
    assert show_token("\n") == "\\n"
    assert show_token("\n\n") == "\\n\\n"
    assert show_token("\t") == "\\t"
    assert show_token(" ") == "␣"
    assert show_token("   ") == "␣␣␣"
    assert show_token("a b") == "a b"
    assert show_token("end ") == "end␣"
    assert show_token("") == "∅"
    assert show_token(None) == "∅"
    assert show_token("\x07") == "\\x07"
    assert show_token("back\\slash") == "back\\\\slash"


def test_shorten():
    assert shorten("abc", 5) == "abc"
    assert shorten("abcdefgh", 5) == "abcd…"
    assert len(shorten("x" * 100, 16)) == 16
    with pytest.raises(PatchscopesError):
        shorten("abc", 0)


def test_cell_text_and_probability_next_token(frame):
    rec = frame.iloc[1].to_dict()
    assert cell_text(rec) == "\\n"
    assert cell_probability(rec) == pytest.approx(0.3)


def test_cell_text_and_probability_generation():
    rec = _row(1, 2, " x", ["A", "B", "C"], [0.5, 0.3, 0.1], generated="Bridge in Paris, France and more",
               generated_ids=[101, 7, 8])
    # the first generated token is id 101 = "B" (p = 0.3), not the argmax "A"
    assert cell_probability(rec) == pytest.approx(0.3)
    assert cell_text(rec, 10) == "Bridge in…"
    sampled_outside_top_k = dict(rec, generated_token_ids=[5])
    assert cell_probability(sampled_outside_top_k) is None


def test_grid_rows_columns_and_labels(frame):
    g = grid(frame)
    assert g.row_keys == [0, 4]
    assert g.row_labels == ["0", "4"]
    assert g.col_labels == ["2:␣Eiffel", "3:␣Tower"]
    assert not g.multi_target
    assert g.get(4, ("The Eiffel Tower", 2))["top_token"] == " Paris"


def test_grid_labels_source_to_target_when_several_target_layers():
    frame = pd.DataFrame([
        _row(1, 0, "a", ["p"], [0.5], target_layer=1),
        _row(1, 0, "a", ["q"], [0.5], target_layer=3),
        _row(2, 0, "a", ["r"], [0.5], target_layer=1),
        _row(2, 0, "a", ["s"], [0.5], target_layer=3),
    ])
    g = grid(frame)
    assert g.multi_target
    assert g.row_labels == ["1→1", "1→3", "2→1", "2→3"]


def test_grid_prefixes_columns_with_the_prompt_when_several_prompts():
    frame = pd.DataFrame([_row(0, 1, "a", ["p"], [0.5], prompt="first"),
                          _row(0, 1, "b", ["q"], [0.5], prompt="second")])
    assert grid(frame).col_labels == ["#0 1:a", "#1 1:b"]


def test_grid_rejects_empty_or_foreign_frames(frame):
    with pytest.raises(PatchscopesError, match="empty"):
        grid(frame.iloc[:0])
    with pytest.raises(PatchscopesError, match="source_layer"):
        grid(pd.DataFrame({"a": [1]}))


def test_heatmap_cells_colours_and_hover(frame):
    fig = heatmap(frame)
    assert isinstance(fig, go.Figure)
    trace = fig.data[0]
    assert trace.type == "heatmap"
    assert list(trace.y) == ["0", "4"]
    assert list(trace.x) == ["2:␣Eiffel", "3:␣Tower"]
    assert [list(r) for r in trace.z] == [[0.6, 0.3], [0.9, 0.05]]
    # cell text is the visible top token, HTML-escaped for plotly
    assert [list(r) for r in trace.text] == [["␣the", "\\n"], ["␣Paris", "&lt;b&gt;"]]
    hover = trace.customdata[1][0]
    assert "␣Paris" in hover and "0.900" in hover and "␣France" in hover and "0.050" in hover
    assert trace.zmin == 0 and trace.zmax == 1
    assert "token-identity" in fig.layout.title.text


def test_heatmap_generation_shows_text_and_first_token_probability():
    frame = pd.DataFrame([
        _row(0, 1, "Paris", ["City", "Town"], [0.7, 0.2], generated="City of light", generated_ids=[100, 5]),
        _row(1, 1, "Paris", ["Capital", "City"], [0.4, 0.3], generated="Capital of France, on the Seine",
             generated_ids=[100, 6]),
    ])
    trace = heatmap(frame, cell_width=10).data[0]
    assert [r[0] for r in trace.text] == ["City of l…", "Capital o…"]
    assert [r[0] for r in trace.z] == [0.7, 0.4]
    assert "Capital of France, on the Seine" in trace.customdata[1][0]
    assert trace.colorbar.title.text == "p(first token)"


def test_heatmap_of_a_real_sweep_and_of_a_reloaded_csv(tmp_path):
    from patchscopes.testing import tiny_model

    model = tiny_model("gpt2")
    frame = patchscopes.sweep(model, "Hi you", "logit-lens", layers="all", positions="-2:", top_k=3, baseline=True)
    trace = heatmap(frame).data[0]
    assert len(trace.y) == model.num_layers and len(trace.x) == 2
    expected = frame.set_index(["source_layer", "source_position"])["top_prob"]
    positions = sorted(frame["source_position"].unique())
    for i, layer in enumerate(range(model.num_layers)):
        for j, pos in enumerate(positions):
            assert trace.z[i][j] == pytest.approx(expected[(layer, pos)])
    assert "unpatched" in trace.customdata[0][0]
    # the same figure from the table written and read back as CSV
    path = patchscopes.save_results(frame, tmp_path / "r.csv")
    again = heatmap(patchscopes.load_results(path)).data[0]
    assert [list(r) for r in again.text] == [list(r) for r in trace.text]
    for row_again, row in zip(again.z, trace.z):
        assert list(row_again) == pytest.approx(list(row))


def test_save_figure_html_is_self_contained(frame, tmp_path):
    path = save_figure(heatmap(frame), tmp_path / "sub" / "fig.html")
    assert path == tmp_path / "sub" / "fig.html"
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "Plotly.newPlot" in text
    assert len(text) > 1_000_000  # plotly.js itself is inlined
    # nothing is loaded from the network (plotly.js carries a topojson URL default, but no script source)
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert "␣Paris" in text or "\\u2423Paris" in text  # the figure's data (plotly may escape non-ASCII)


def test_save_figure_rejects_unknown_extensions(frame, tmp_path):
    with pytest.raises(PatchscopesError, match="cannot save a figure"):
        save_figure(heatmap(frame), tmp_path / "fig.txt")


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is not None, reason="kaleido is installed")
def test_save_figure_png_without_kaleido_says_what_to_do(frame, tmp_path):
    with pytest.raises(PatchscopesError) as info:
        save_figure(heatmap(frame), tmp_path / "fig.png")
    assert "kaleido" in info.value.message
    assert ".html" in info.value.hint and "pip install kaleido" in info.value.hint
    assert not (tmp_path / "fig.png").exists()


def test_save_figure_unwritable_path_is_a_clear_error(frame, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PatchscopesError, match="could not write"):
        save_figure(heatmap(frame), blocker / "fig.html")


def test_heatmap_and_table_legends_say_a_cell_is_the_next_token(tiny_llama):
    """The readout is the next token after the target prompt (or the text generated after it), not the token at
    the patched position; the heatmap says so under its title."""
    frame = patchscopes.sweep(tiny_llama, "Hi you", layers="0", positions="-2:")
    legend = readout_legend(frame)
    assert "next token" in legend and "not the token at the position" in legend
    assert html.escape(legend.split(":")[0]) in heatmap(frame).layout.title.text
    lens = patchscopes.sweep(tiny_llama, "Hi you", "logit-lens", layers="0", positions="-1")
    assert "the next token predicted from the state at that position" in readout_legend(lens)
    described = patchscopes.sweep(tiny_llama, "Hi you", "description", layers="0", positions="-1", max_new_tokens=2)
    assert "generated text" in readout_legend(described) and "without the ':'" in readout_legend(described)
