"""The typer application, its ``eval`` group, and the error handling every command shares.

Commands are registered by modules of this package on :data:`app` (``patchscopes NAME``) or
:data:`eval_app` (``patchscopes eval NAME``). A :class:`~patchscopes.errors.PatchscopesError` raised by a
command is printed as one message, without a traceback, and the process exits with status 2.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.text import Text

from patchscopes.errors import PatchscopesError

app = typer.Typer(
    name="patchscopes",
    help="Ask a language model what its own hidden states mean (Patchscopes).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Reproduce the paper's experiments.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def handle_errors(fn: F) -> F:
    """Turn :class:`PatchscopesError` into one clear message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PatchscopesError as err:
            # The message may quote user input (prompts, paths, token text): never read it as rich markup.
            err_console.print(Text.assemble(("error: ", "bold red"), err.message), highlight=False, soft_wrap=True)
            if err.hint:
                err_console.print(Text.assemble(("hint: ", "bold"), err.hint), highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def wrote(what: str, path: object) -> None:
    """Tell the user that ``what`` (a kind of output, with any detail) was written to ``path``."""
    console.print(Text.assemble(("wrote ", "green"), f"{what}: ", str(path)), soft_wrap=True)


def layer_list(layers) -> str:
    """Layers as the comma-separated list the ``--layers`` options accept."""
    return ",".join(str(layer) for layer in layers)


def write_json(data, path: Path) -> None:
    """Write ``data`` as indented UTF-8 JSON; in a list of records, NaN values become null.

    Raises:
        PatchscopesError: The file cannot be written.
    """
    if isinstance(data, list):
        data = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} if isinstance(r, dict)
            else r
            for r in data
        ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as err:
        raise PatchscopesError(f"could not write {path}: {err.strerror or err}") from err


def main() -> None:
    """Entry point of the ``patchscopes`` script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
