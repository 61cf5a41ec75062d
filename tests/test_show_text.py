"""``ps.show(df)`` outside a notebook: the sweep printed as text tables, a plain ``repr``; in a Jupyter kernel,
nothing printed (the front end draws the heatmap); the ``notebook`` extra that installs Jupyter."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import patchscopes as ps
from patchscopes.plots import cell_text
from patchscopes.plots import notebook as notebook_module

PROMPT = "Hi you"


def test_show_outside_a_notebook_prints_the_sweep_as_text_tables(tiny_llama, capsys):
    df = ps.sweep(tiny_llama, PROMPT, "token-identity", layers="0,2", positions="-3:")
    view = ps.show(df)
    out = capsys.readouterr().out
    assert out.startswith("token-identity · tiny-llama · 'Hi you'\n")
    rows = {line.strip("│").split("│")[0].strip(): line for line in out.splitlines() if line.startswith("│")}
    for rec in df.to_dict("records"):
        assert cell_text(rec) in rows[str(rec["source_layer"])]
    assert "patchscopes[notebook]" in out
    assert "<" + "br>" not in out and "&#x27;" not in out and "<sup>" not in out
    assert str(view) == view.text and "┏" in view.text


def test_the_repr_is_plain_text():
    view = notebook_module.HeatmapView(types.SimpleNamespace(layout=types.SimpleNamespace(title=types.SimpleNamespace(
        text="description · m · &#x27;Marie&#x27;<br><sup>cell: the text</sup>"))), shape=(3, 1))
    assert repr(view) == "<HeatmapView description · m · 'Marie': 3 rows × 1 positions>"


def test_in_a_jupyter_kernel_show_prints_nothing(tiny_llama, capsys, monkeypatch):
    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert notebook_module.in_notebook()
    df = ps.sweep(tiny_llama, PROMPT, "logit-lens", layers="1", positions="-1")
    view = ps.show(df)
    assert capsys.readouterr().out == ""
    assert "Plotly.newPlot" in view._repr_html_()
    terminal = types.SimpleNamespace()  # IPython in a terminal: no kernel
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal))
    assert not notebook_module.in_notebook()


def test_the_notebook_extra_installs_jupyter():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    line = re.search(r"^notebook = \[(.*)\]$", text, flags=re.MULTILINE)
    assert line is not None
    extra = {req.strip().strip('"').split(">")[0].split("=")[0] for req in line.group(1).split(",")}
    assert {"notebook", "ipython"} <= extra
