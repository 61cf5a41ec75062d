"""Writing files: the one place that writes what the CLI and the Python API hand a user, and that opens and
writes safetensors files and folders (lenses, maps, LREs, soft prompts, checkpoints).

- :func:`write_output` writes every user-facing output (JSON, CSV, Parquet, HTML, figures, lenses and maps):
  atomically (a temporary file in the same folder, flushed, then ``os.replace``d over the final name, so an
  existing file is never half-rewritten), with a one-line :class:`~patchscopes.errors.PatchscopesError` when it
  cannot be written. Inside :func:`all_or_nothing` (each CLI command runs in one) the renames wait for the end of
  the block and are dropped if it fails: a command whose second output fails leaves no first output behind.
- :func:`check_writable` tells before any work starts whether an output can be written (a folder it may write,
  not a parent path that is a file).
- :func:`atomic_write` is the same atomic write without the deferral, for run directories and checkpoints, whose
  files must stay even when the command later fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (setting it is the only way to read it; later, threads may be writing files)


def _temporary_beside(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder, with the permissions a plain ``open(path, "w")`` would give
    (``mkstemp`` makes it private, 0600, which the renamed output would keep)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_PENDING: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("patchscopes_pending_outputs", default=None)


def write_output(path: str | Path, write: Callable[[Path], None], what: str = "the output") -> Path:
    """Write a user-facing output: ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``
    (at the end of the enclosing :func:`all_or_nothing` block, if any).

    Args:
        path: The output file; its folder is created if missing.
        write: Writes the whole output to the path it is given.
        what: What the file is, for the message (``"the lens"``).

    Returns:
        ``path``.

    Raises:
        PatchscopesError: The file cannot be written (nothing is left behind: no temporary file, no half file).
    """
    path = Path(path)
    failed = f"could not write {what}"
    try:
        _check_parents(path.parent, failed, named=path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(path)
    except OSError as err:
        raise _unwritable(path, failed, err) from err
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        pending = _PENDING.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise _unwritable(path, failed, err) from err
        raise
    return path


def write_output_text(path: str | Path, text: str, what: str = "the output") -> Path:
    """Write ``text`` (UTF-8) as a user-facing output (see :func:`write_output`)."""
    return write_output(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Outputs written in this block (:func:`write_output`) appear together at its end, or none of them if it
    raises; a nested block joins the outer one."""
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    finally:
        _PENDING.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: a parent path that is a file, a folder this
    process may not write in, a file output that is a folder (or, with ``folder``, a folder output that is a file).
    Nothing is created.

    Args:
        path: The output file (or folder, with ``folder=True``).
        what: The option or object, for the message (``"--json"``).
        folder: ``path`` is a folder the output is written into.

    Raises:
        PatchscopesError: One message saying what is wrong, with a hint.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise PatchscopesError(f"{what} {path}: this is a folder, not a file",
                               hint="give a file name in it, e.g. " + str(path / "out"))
    if folder and path.exists() and not path.is_dir():
        raise PatchscopesError(f"{what} {path}: this is a file, not a folder", hint="give a new or existing folder")
    _check_parents(path if folder else path.parent, what, named=path)
    home = path if folder and path.is_dir() else path.parent
    while not home.exists():
        home = home.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".patchscopes-probe.", dir=home)
    except OSError as err:
        raise _unwritable(path, what, err, folder=home) from None
    os.close(fd)
    os.unlink(name)


def _check_parents(folder: Path, what: str, *, named: Path | None = None) -> None:
    """Refuse a folder path one of whose parts is an existing file (mkdir would say "File exists")."""
    for part in [folder, *folder.parents]:
        if part.exists():
            if not part.is_dir():
                raise PatchscopesError(f"{what} {named or folder}: {part} is a file, not a folder",
                                       hint="give a path whose folders are folders (or move that file away)")
            return


def _unwritable(path: Path, what: str, err: OSError, *, folder: Path | None = None) -> PatchscopesError:
    reason = err.strerror or str(err)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or folder is not None:
        where = folder if folder is not None else path.parent
        return PatchscopesError(f"{what} {path}: cannot write in {where} ({reason})",
                                hint="choose a folder you can write in (e.g. under your home or the current folder)")
    return PatchscopesError(f"{what} {path}: {reason}")


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Refuse a file whose floating-point tensors hold NaN or infinite values, naming the file and the tensor.

    Args:
        tensors: The tensors read, by name.
        path: The file they were read from.
        what: What the file is, for the message (``"the lens"``).

    Raises:
        PatchscopesError: A tensor holds a NaN or an infinite value.
    """
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise PatchscopesError(
                f"{what} {path}: the tensor {name!r} holds {bad} NaN or infinite value{'s' if bad != 1 else ''}",
                hint="the file is corrupt or was written by a diverged fit: fit or save it again")


def read_safetensors(
    path: str | Path, what: str, *, hint: str | None = None
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The string metadata and every tensor of a safetensors file.

    Args:
        path: The file.
        what: What the file should be, for messages (``"the LRE"``).
        hint: A hint for a missing or unreadable file.

    Raises:
        PatchscopesError: The file is missing, cannot be read as safetensors, or holds NaN or infinite values
            (:func:`check_finite`).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PatchscopesError(f"no such file for {what}: {path}", hint=hint)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:
        raise PatchscopesError(f"could not read {what} {path}: {err}", hint=hint) from err
    check_finite(tensors, path, what)
    return metadata, tensors


def read_folder(
    directory: str | Path, config_file: str, weights_file: str, what: str, *, hint: str | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON config and the tensors of a folder holding ``config_file`` and ``weights_file`` (a lens).

    Raises:
        PatchscopesError: A file is missing or unreadable.
    """
    import json

    directory = Path(directory)
    config_path, weights_path = directory / config_file, directory / weights_file
    if not config_path.is_file() or not weights_path.is_file():
        raise PatchscopesError(f"{directory} is not {what} folder (it needs {config_file} and {weights_file})",
                               hint=hint)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise PatchscopesError(f"could not read {config_path}: {err}", hint=hint) from err
    _, tensors = read_safetensors(weights_path, what, hint=hint)
    return config, tensors


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], what: str) -> Path:
    """Write ``tensors`` (made contiguous, on the CPU) with ``metadata`` to the safetensors file ``path``, its
    folder created if needed, as an output (:func:`write_output`): the counterpart of :func:`read_safetensors`.

    Raises:
        PatchscopesError: The file could not be written (``what`` names the object).
    """
    from safetensors.torch import save_file

    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    return write_output(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), what)


def write_folder(directory: str | Path, config_file: str, weights_file: str, config: dict,
                 tensors: dict[str, torch.Tensor], metadata: dict[str, str], what: str) -> Path:
    """Write ``tensors`` (safetensors, with ``metadata``) and ``config`` (JSON) into ``directory``, created if
    needed: the counterpart of :func:`read_folder`.

    Raises:
        PatchscopesError: The folder or a file could not be written (``what`` names the object).
    """
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise PatchscopesError(f"could not write {what} to {directory}: it is a file, not a folder",
                               hint="give a folder (new or existing) for it")
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    write_output(directory / weights_file, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), what)
    write_output_text(directory / config_file, json.dumps(config, indent=1) + "\n", what)
    return directory
