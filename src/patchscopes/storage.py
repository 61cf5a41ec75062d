"""Safetensors files and folders: the one place that opens and writes them for lenses, LREs, soft prompts and
checkpoints, and atomic writes (write a temporary file, then rename) for run directories and checkpoints."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk and rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
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
    folder created if needed: the counterpart of :func:`read_safetensors`.

    Raises:
        PatchscopesError: The file could not be written (``what`` names the object).
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    except OSError as err:
        raise PatchscopesError(f"could not write {what} to {path}: {err.strerror or err}") from err
    return path


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
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(directory / weights_file),
                  metadata=metadata)
        (directory / config_file).write_text(json.dumps(config, indent=1) + "\n")
    except OSError as err:
        raise PatchscopesError(f"could not write {what} to {directory}: {err.strerror or err}") from err
    return directory
