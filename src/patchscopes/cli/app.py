"""The typer application, its ``eval`` group, and the error handling every command shares.

Commands are registered by modules of this package on :data:`app` (``patchscopes NAME``) or
:data:`eval_app` (``patchscopes eval NAME``). A :class:`~patchscopes.errors.PatchscopesError` raised by a
command is printed as one message, without a traceback, and the process exits with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click
import typer
from rich.console import Console
from rich.text import Text
from tqdm.auto import tqdm
from typer.core import TyperCommand

from patchscopes.data.text import DATA_DOCS_HINT
from patchscopes.errors import PatchscopesError
from patchscopes.storage import all_or_nothing, write_output


class Command(TyperCommand):
    """A command whose help reads well at 80 columns.

    The usage line names required arguments plainly (``PROMPT``, where typer writes ``{PROMPT}``), the
    arguments section shows each argument's name and help without a type, and in a list of commands the
    summary is the command's ``short_help`` or the first paragraph of its help, never cut mid-word.
    """

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        """``[OPTIONS] PROMPT`` rather than ``[OPTIONS] {PROMPT}``; hidden arguments are left out."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """An ``Arguments`` section of names and help, then the ``Options`` section."""
        arguments = [(p.metavar or (p.name or "").upper(), p.help or "") for p in self.get_params(ctx)
                     if p.param_type_name == "argument" and not p.hidden]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        options = [r for p in self.get_params(ctx) if p.param_type_name == "option"
                   if (r := p.get_help_record(ctx)) is not None]
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        """Parse the command line; a bad value, an unknown option or a missing argument is reported as the
        project's ``error:`` and ``hint:`` lines (exit status 2), not click's usage block."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except USAGE_ERRORS as err:
            report(usage_error(err, info_name, parent))
            raise typer.Exit(code=2) from None

    def get_short_help_str(self, limit: int = 45) -> str:
        """The ``short_help``, or the help's first paragraph."""
        if self.short_help:
            return self.short_help
        return inspect.cleandoc(self.help or "").split("\n\n")[0].replace("\n", " ")


class App(typer.Typer):
    """A :class:`typer.Typer` whose commands are :class:`Command` s, report errors with :func:`handle_errors`,
    and whose help is plain text: at 80
    columns it keeps one column of option names and one of help, where rich panels squeeze four. Docstrings
    mark their examples with a ``\\b`` line so that click does not rewrap them."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(**kwargs)

    def command(self, *args, cls: type[TyperCommand] | None = None, **kwargs):  # type: ignore[override]
        """Register a command (a :class:`Command` unless ``cls`` says otherwise) whose
        :class:`~patchscopes.errors.PatchscopesError` s are reported by :func:`handle_errors`."""
        register = super().command(*args, cls=cls or Command, **kwargs)

        def decorate(fn: F) -> F:
            register(handle_errors(fn))
            return fn

        return decorate


app = App(

    name="patchscopes",
    help="Ask a language model what its own hidden states mean (Patchscopes).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = App(help="Reproduce the paper's experiments.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

# typer parses with its own copy of click: its usage errors are the bases of typer.BadParameter.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    click.UsageError, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"))
BAD_PARAMETERS: tuple[type[Exception], ...] = (click.BadParameter, typer.BadParameter)
# Options that name data files: when one is missing, the hint also says how to get the data sets.
DATA_OPTIONS = {"--text", "--relations", "--entities", "--corpus"}


def report(err: PatchscopesError) -> None:
    """Print ``err`` as one ``error:`` line and, where it has one, a ``hint:`` line, on stderr."""
    # The message may quote user input (prompts, paths, token text): never read it as rich markup.
    err_console.print(Text.assemble(("error: ", "bold red"), err.message), highlight=False, soft_wrap=True)
    if err.hint:
        err_console.print(Text.assemble(("hint: ", "bold"), err.hint), highlight=False, soft_wrap=True)


def usage_error(err: Exception, info_name: str | None, parent: click.Context | None) -> PatchscopesError:
    """A click usage error (a bad option value, an unknown option, a missing argument) as a
    :class:`PatchscopesError`: the option named, and a hint (the option's own, or where its help is)."""
    message = err.format_message()  # type: ignore[attr-defined]
    param = getattr(err, "param", None)
    if isinstance(err, BAD_PARAMETERS) and param is not None and type(err).__name__ != "MissingParameter":
        names = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        name = names[0] if names else (getattr(param, "metavar", None) or str(param.name).upper())
        message = f"{name}: {err.message}"
    command = " ".join(n for n in (parent.command_path if parent else None, info_name) if n)
    hint = getattr(err, "hint", None) or f"see `{command} --help`"
    if type(err).__name__ == "MissingParameter" and set(getattr(param, "opts", None) or ()) & DATA_OPTIONS:
        hint = f"{hint}; {DATA_DOCS_HINT}"
    return PatchscopesError(message.rstrip("."), hint=hint)


def handle_errors(fn: F) -> F:
    """Turn :class:`PatchscopesError` into one clear message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with all_or_nothing(), one_line_warnings():  # a failed command leaves none of its outputs
                return fn(*args, **kwargs)
        except PatchscopesError as err:
            report(err)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show warnings (a corrupt shard redone, the reference engine taking over) as one ``warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        with tqdm.external_write_mode(file=sys.stderr):  # on a line of its own, not after a progress bar
            err_console.print(Text.assemble(("warning: ", "bold yellow"), str(message)), highlight=False,
                              soft_wrap=True)

    shown = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def wrote(what: str, path: object) -> None:
    """Tell the user that ``what`` (a kind of output, with any detail) was written to ``path``."""
    console.print(Text.assemble(("wrote ", "green"), f"{what}: ", str(path)), soft_wrap=True)


def layer_list(layers) -> str:
    """Layers as the comma-separated list the ``--layers`` options accept."""
    return ",".join(str(layer) for layer in layers)


def write_json(data, path: Path) -> None:
    """Write ``data`` as indented UTF-8 JSON (atomically); in a list of records, NaN values become null.

    Raises:
        PatchscopesError: The file cannot be written.
    """
    if isinstance(data, list):
        data = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} if isinstance(r, dict)
            else r
            for r in data
        ]
    def dump(tmp: Path) -> None:  # streamed to the file: json.dumps with indent holds every piece at once
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, ensure_ascii=False)
            handle.write("\n")

    write_output(path, dump, "the JSON")


def main() -> None:
    """Entry point of the ``patchscopes`` script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
