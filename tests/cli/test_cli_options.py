"""The option checks every command shares: engines, output file names, images without kaleido."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from patchscopes import PatchscopesError
from patchscopes.cli.options import check_engine, check_output_paths


def test_engines():
    check_engine("batched")
    check_engine("reference")
    with pytest.raises(PatchscopesError, match="unknown engine 'fast'"):
        check_engine("fast")


@pytest.mark.parametrize(("json_path", "plot", "message"), [
    ("out.csv", None, "--json out.csv: the file name must end in .json"),
    (None, "out.gif", "--plot out.gif: the file name must end in .html or .png"),
])
def test_wrong_output_names(json_path, plot, message):
    with pytest.raises(PatchscopesError, match=message):
        check_output_paths(json_path and Path(json_path), plot and Path(plot))


def test_good_output_names():
    check_output_paths(None, None)
    check_output_paths(Path("out.json"), Path("figure.HTML"))


def test_images_need_kaleido(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    with pytest.raises(PatchscopesError, match="kaleido"):
        check_output_paths(None, Path("figure.png"))
    check_output_paths(None, Path("figure.html"))
