"""Command-line options shared by several commands, declared once, with their checks.

Options whose help differs a little between commands are made by small functions (``seed_option("the
windows")``); the options that say how and where models run (``--engine``, ``--device``, ``--dtype``,
``--threads``) are added to a command by :func:`runtime_options`, which hands them to it as one
:class:`Runtime`, and those that say where its finished work is kept and who runs it (``--run-dir``,
``--workers``, ``--ray-address``) by :func:`run_options`, as one :class:`Runs`. Help strings are short, and
metavars name what a value is (``N``, ``SPEC``, ``FILE``), so that ``--help`` reads well at 80 columns.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import torch
import typer

from patchscopes.engine import BatchBudget, check_engine
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel, load_model
from patchscopes.runs import Executor, RayExecutor, RunDir, RunOptions, settings_of
from patchscopes.specs import check_spec, looks_numeric
from patchscopes.storage import check_writable

PLOT_SUFFIXES = (".html", ".htm", ".png", ".svg", ".pdf")

MODEL_HELP = "An alias (see `patchscopes models`), a .gguf file, a model folder or a hub id."
TEXT_HELP = ("Plain text, one document per paragraph (WikiText headings are skipped). Repeat the option for "
             "several files.")
SPEC_HELP = "'all', '0,3,5', '2:10' (2 to 9), '0:30:5'; negatives count from the end"

F = TypeVar("F", bound=Callable)


def at_least(minimum: float, maximum: float | None = None, *, strict: bool = False) -> Callable[[Any], Any]:
    """An option callback that refuses values below ``minimum`` (or above ``maximum``), as ``min=``/``max=`` do,
    without printing the range in ``--help``, and NaN or infinite numbers; ``strict``: ``minimum`` itself is
    refused too. ``None`` (an option not given) passes."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        span = (f"from {minimum} to {maximum}" if maximum is not None
                else f"above {minimum}" if strict else f"of at least {minimum}")
        problem = None
        if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite (a float option)
            problem = f"must be a finite number, got {value}"
        elif value < minimum or (strict and value == minimum):
            problem = f"must be {'above' if strict else 'at least'} {minimum}, got {value}"
        elif maximum is not None and value > maximum:
            problem = f"must be at most {maximum}, got {value}"
        if problem is not None:
            error = typer.BadParameter(problem)
            error.hint = f"give a value {span}"  # type: ignore[attr-defined] (shown by the command's usage errors)
            raise error
        return value

    return check


ModelOption = Annotated[str, typer.Option("--model", "-m", metavar="NAME", help=MODEL_HELP)]
TextOption = Annotated[list[Path], typer.Option("--text", metavar="FILE", help=TEXT_HELP)]
EngineOption = Annotated[
    str, typer.Option("--engine", metavar="NAME", help="batched (fast) or reference (one plain forward per patch).")
]
DeviceOption = Annotated[
    str, typer.Option("--device", metavar="NAME", help="cpu, cuda, cuda:1, mps, or auto (spread over GPUs).")
]
DtypeOption = Annotated[
    str | None, typer.Option("--dtype", metavar="NAME", show_default=False,
                             help="float32, bfloat16 or float16.  [default: float32 on CPU]")
]
RidgeOption = Annotated[
    float, typer.Option("--ridge", metavar="X", callback=at_least(0.0), help="Ridge term λ of the least-squares fit.")
]
MoreRelationsArgument = Annotated[list[Path] | None, typer.Argument(hidden=True, metavar="PATH")]
ThreadsOption = Annotated[int | None, typer.Option("--threads", metavar="N", help="CPU threads for torch.")]


def seed_option(of: str) -> Any:
    """``--seed N`` (default 0 where the command says so); ``of``: what the seed draws."""
    return Annotated[int, typer.Option("--seed", metavar="N", help=f"Seed of {of}.")]


def json_option(what: str = "the records") -> Any:
    """``--json FILE``: where to write ``what`` as JSON."""
    return Annotated[Path | None, typer.Option("--json", metavar="FILE", help=f"Write {what} here (.json).")]


def plot_option(what: str = "the figure") -> Any:
    """``--plot FILE``: where to write ``what``, as HTML or an image."""
    return Annotated[
        Path | None, typer.Option("--plot", metavar="FILE", help=f"Write {what} here: .html (self-contained) or "
                                  ".png (kaleido).")
    ]


PlotOption = plot_option()


def max_new_tokens_option(help: str = "Tokens to generate.") -> Any:
    """``--max-new-tokens N`` (at least 1)."""
    return Annotated[int, typer.Option("--max-new-tokens", metavar="N", callback=at_least(1), help=help)]


def max_tokens_option(help: str = "Window length in tokens.") -> Any:
    """``--max-tokens N`` (at least 2): the length of the text windows."""
    return Annotated[int, typer.Option("--max-tokens", metavar="N", callback=at_least(2), help=help)]


def eval_fraction_option(help: str = "Share of documents in the eval part.") -> Any:
    """``--eval-fraction X`` (0 to 1): the share of documents held out for evaluation."""
    return Annotated[float, typer.Option("--eval-fraction", metavar="X", callback=at_least(0.0, 1.0), help=help)]


def spec_syntax(what: str = "layer") -> Callable[[Any], Any]:
    """An option callback that checks a SPEC's syntax (:func:`~patchscopes.specs.check_spec`) as the command line
    is read, before any model loads: a typo (``-l 0-5``) is reported at once, its range once the model is known.
    ``None`` (an option not given) passes."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        try:
            check_spec(value, what=what)
        except PatchscopesError as err:
            error = typer.BadParameter(err.message)
            error.hint = err.hint  # type: ignore[attr-defined] (shown by the command's usage errors)
            raise error from None
        return value

    return check


def layers_option(help: str, *names: str, optional: bool = False) -> Any:
    """A layer SPEC option (``--layers``/``-l`` unless ``names`` are given), its syntax checked as the command line
    is read (:func:`spec_syntax`); ``optional``: ``None`` allowed."""
    kind = str | None if optional else str
    names = names or ("--layers", "-l")
    what = "target layer" if "target" in names[0] else "layer"
    return Annotated[kind, typer.Option(*names, metavar="SPEC", callback=spec_syntax(what), help=help)]


def methods_option(help: str) -> Any:
    """``--methods LIST``: method names, comma-separated or repeated (see :func:`parse_methods`)."""
    return Annotated[list[str] | None, typer.Option("--methods", metavar="LIST", show_default=False, help=help)]


def parse_methods(values: list[str] | None) -> list[str] | None:
    """Method names from repeated and/or comma-separated options (``None``: all)."""
    if not values:
        return None
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def position_spec(value: str, prompt: str, option: str = "--positions") -> str | list[str]:
    """A ``--positions`` value: a SPEC (its syntax checked here, its range once the prompt is tokenized), or
    words of ``prompt``, comma-separated (``Eiffel``, ``Eiffel,Tower``: the last token of each one's last
    occurrence, as ``Source(position="Eiffel")``). A value made of digits, signs and colons is always a SPEC, so
    that a typo in one (``0-5``) is reported as such, before the model loads.

    Raises:
        PatchscopesError: A malformed SPEC, a word that is not in the prompt, or words mixed with numbers.
    """
    try:
        check_spec(value, what="position")
        return value
    except PatchscopesError as err:
        parts = [part for part in value.split(",") if part.strip()]
        numeric = [part for part in parts if looks_numeric(part)]
        if not parts or len(numeric) == len(parts):
            raise
        if numeric:
            raise PatchscopesError(f"{option} {value!r} mixes numbers and words of the prompt",
                                   hint=f"give either a SPEC (e.g. {option} -3:) or words (e.g. {option} "
                                        f"{parts[0] if parts[0] not in numeric else 'Eiffel'})") from None
        missing = [part for part in parts if part not in prompt]
        if missing:
            words = prompt.split()
            example = f"give words of the prompt, e.g. {option} {words[0]!r}" if words else "give a SPEC"
            raise PatchscopesError(
                f"{option} {value!r}: {missing[0]!r} is neither a position SPEC nor a word of the prompt {prompt!r}",
                hint=f"{err.hint}; or {example}" if err.hint else example) from None
        return parts


def check_choice(value: str, choices: Sequence[str], option: str) -> None:
    """Refuse a value of ``option`` that is not one of ``choices``."""
    if value not in choices:
        raise PatchscopesError(f"unknown {option} {value!r}", hint=f"use one of {', '.join(choices)}")


def check_output_paths(json_path: Path | None, plot: Path | None, *, files: dict[str, Path | None] | None = None,
                       folders: dict[str, Path | None] | None = None) -> None:
    """Refuse, before anything runs, output names with the wrong extension, images without kaleido, and any
    output that cannot be written (:func:`~patchscopes.storage.check_writable`: a folder it may not write in, a
    parent path that is a file).

    Args:
        json_path: ``--json``.
        plot: ``--plot``.
        files: The command's other output files, by option (``{"--csv": path}``).
        folders: Its output folders, by option (``{"--out": folder}``).
    """
    _check_suffixes(json_path, plot)
    for option, path in {"--json": json_path, "--plot": plot, **(files or {})}.items():
        if path is not None:
            check_writable(path, option)
    for option, path in (folders or {}).items():
        if path is not None:
            check_writable(path, option, folder=True)


def _check_suffixes(json_path: Path | None, plot: Path | None) -> None:
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


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads (fewer can be faster when other programs load the machine)."""
    if threads is not None:
        if threads < 1:
            raise PatchscopesError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def check_device(device: str) -> None:
    """Fail early, with a clear message, on a device that does not exist here."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PatchscopesError(f"unknown device {device!r}", hint="use cpu, cuda, cuda:1, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PatchscopesError(f"device {device!r} asked for, but CUDA is not available here",
                                   hint="use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PatchscopesError(f"there is no {device!r}: this machine has {torch.cuda.device_count()} GPU(s)",
                                   hint="use --device cuda:0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PatchscopesError("device 'mps' asked for, but MPS is not available here", hint="use --device cpu")


@dataclass(frozen=True)
class Runtime:
    """How and where a command runs its models: the values of ``--engine``, ``--device``, ``--dtype`` and
    ``--threads``."""

    engine: str = "batched"
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None

    def check(self) -> None:
        """Refuse an unknown engine, a device this machine lacks, or fewer than one thread, before anything
        loads."""
        check_engine(self.engine)
        check_device(self.device)
        if self.threads is not None and self.threads < 1:
            raise PatchscopesError(f"--threads must be at least 1, got {self.threads}")

    def load(self, model: str) -> LanguageModel:
        """Load ``model`` on this device and dtype, after setting the thread count."""
        set_threads(self.threads)
        return load_model(model, device=self.device, dtype=self.dtype)

    def options(self, runs: Runs | None = None, store: RunDir | None = None,
                budget: BatchBudget | None = None) -> RunOptions:
        """The Python API's :class:`~patchscopes.runs.RunOptions` of this command: its engine, progress bars on,
        the Ray executor of ``runs`` (if any), the open run directory ``store`` and a batch ``budget``."""
        return RunOptions(engine=self.engine, budget=budget, progress=True,  # type: ignore[arg-type]
                          executor=runs.executor if runs is not None else None, run_dir=store)


_RUNTIME_PARAMS = {
    "engine": (EngineOption, "batched"),
    "device": (DeviceOption, "cpu"),
    "dtype": (DtypeOption, None),
    "threads": (ThreadsOption, None),
}


def runtime_options(*, engine: bool = True) -> Callable[[F], F]:
    """Add ``--engine`` (unless ``engine=False``: a command that fits rather than patches), ``--device``,
    ``--dtype`` and ``--threads`` to a command, after its own options.

    The command takes a keyword parameter ``runtime`` (a :class:`Runtime`) instead of these options; they
    are checked (:meth:`Runtime.check`) before the command runs.
    """
    names = [n for n in _RUNTIME_PARAMS if engine or n != "engine"]
    return option_group("runtime", {n: _RUNTIME_PARAMS[n] for n in names}, Runtime)


def option_group(keyword: str, params: dict[str, tuple[Any, Any]], build: Callable[..., Any]) -> Callable[[F], F]:
    """Add the options ``params`` (name: (annotation, default)) to a command, after its own, and hand them to it
    as one value, ``build(**values)``, in its keyword parameter ``keyword``; the value's ``check()`` runs first,
    and its ``close()``, where it has one, after the command."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != keyword]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for n, (annotation, default) in params.items()]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            value = build(**{n: kwargs.pop(n) for n in params if n in kwargs})
            value.check()
            try:
                return fn(*args, **{keyword: value}, **kwargs)
            finally:
                if hasattr(value, "close"):
                    value.close()

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# -- run directories and workers ---------------------------------------------------------------------------
RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", metavar="DIR", help="Keep each finished piece of work here; the same "
                              "command run again with DIR resumes (a DIR of another run is refused).")
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", metavar="N", callback=at_least(1), help="Run the patches on N Ray "
                             "workers, one model each (a local cluster; one GPU each where there are GPUs).")
]
RayAddressOption = Annotated[
    str | None, typer.Option("--ray-address", metavar="ADDR", help="Run the patches on this Ray cluster ('auto', "
                             "or ray://HOST:10001).")
]
NOT_SETTINGS = ("json_path", "csv_path", "html_path", "plot", "details", "out", "checkpoint", "examples", "runtime",
                "runs")
"""A command's arguments that do not change its results (outputs and how it runs), left out of its manifest."""


@dataclass
class Runs:
    """Where a command keeps its finished work and who runs its patches: ``--run-dir``, ``--workers`` and
    ``--ray-address``. The Ray executor starts on first use and stops when the command returns."""

    run_dir: Path | None = None
    workers: int | None = None
    ray_address: str | None = None
    _executor: RayExecutor | None = field(default=None, init=False, repr=False)

    def check(self) -> None:
        """Refuse workers without Ray installed, and a --run-dir that cannot be written, before anything loads."""
        if (self.workers or self.ray_address) and importlib.util.find_spec("ray") is None:
            raise PatchscopesError("--workers and --ray-address need Ray, which is not installed",
                                   hint="pip install 'patchscopes[ray]'")
        if self.run_dir is not None:
            check_writable(self.run_dir, "--run-dir", folder=True)

    def open(self, command: str, arguments: dict, runtime: Runtime, models: Sequence[LanguageModel],
             data: object = None) -> RunDir | None:
        """The run directory of ``--run-dir`` (``None`` without one), opened for ``command`` with its
        ``arguments`` (its ``locals()`` on entry: data files are fingerprinted, outputs left out), engine, device
        and dtype, and the fingerprint of ``data`` (inputs read from elsewhere than its arguments).

        Raises:
            PatchscopesError: The directory holds another run.
        """
        if self.run_dir is None:
            return None
        settings = {**settings_of(arguments, exclude=NOT_SETTINGS), "engine": runtime.engine,
                    "device": runtime.device, "dtype": runtime.dtype}
        return RunDir.open(self.run_dir, command=command, settings=settings, models=models, data=data)

    @property
    def executor(self) -> Executor | None:
        """The Ray executor of ``--workers``/``--ray-address`` (``None``: this process runs the patches)."""
        if self._executor is None and (self.workers or self.ray_address):
            self._executor = RayExecutor(self.workers, address=self.ray_address)
        return self._executor

    def close(self) -> None:
        """Stop the Ray workers, if any started."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def run_options(*, workers: bool = True) -> Callable[[F], F]:
    """Add ``--run-dir`` and (unless ``workers=False``: commands that run no patches) ``--workers`` and
    ``--ray-address`` to a command, handed to it as one :class:`Runs` in its keyword parameter ``runs``."""
    params: dict[str, tuple[Any, Any]] = {"run_dir": (RunDirOption, None)}
    if workers:
        params.update(workers=(WorkersOption, None), ray_address=(RayAddressOption, None))
    return option_group("runs", params, Runs)
