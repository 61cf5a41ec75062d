"""Command-line options shared by several commands, declared once, with their checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from patchscopes.errors import PatchscopesError

ENGINES = ("batched", "reference")
PLOT_SUFFIXES = (".html", ".htm", ".png", ".svg", ".pdf")

EngineOption = Annotated[str, typer.Option("--engine", help="batched or reference.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1...")]
DtypeOption = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.", show_default="float32 on CPU")
]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")]
PlotOption = Annotated[
    Path | None, typer.Option("--plot", help="Write the figure here: .html (self-contained) or .png (kaleido).")
]


def check_engine(engine: str) -> None:
    """Refuse an unknown ``--engine``."""
    if engine not in ENGINES:
        raise PatchscopesError(f"unknown engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")


def check_output_paths(json_path: Path | None, plot: Path | None) -> None:
    """Refuse output names with the wrong extension, and images without kaleido, before anything runs."""
    if json_path is not None and json_path.suffix.lower() != ".json":
        raise PatchscopesError(f"--json {json_path}: the file name must end in .json")
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise PatchscopesError(f"--plot {plot}: the file name must end in .html or .png",
                               hint="e.g. --plot figure.html")
    image = plot is not None and plot.suffix.lower() not in (".html", ".htm")
    if image and importlib.util.find_spec("kaleido") is None:
        raise PatchscopesError(f"--plot {plot}: saving {plot.suffix} images needs the kaleido package, which is not "
                               "installed", hint="save as .html instead (self-contained, works offline), or pip "
                               "install kaleido")
