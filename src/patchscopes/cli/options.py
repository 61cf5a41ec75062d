"""Command-line options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EngineOption = Annotated[str, typer.Option("--engine", help="batched or reference.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1...")]
DtypeOption = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.", show_default="float32 on CPU")
]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")]
PlotOption = Annotated[
    Path | None, typer.Option("--plot", help="Write the figure here: .html (self-contained) or .png (kaleido).")
]
