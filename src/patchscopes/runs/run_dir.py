"""Run directories: a manifest and one file per finished shard, so a killed run loses only unfinished shards.

Layout of a run directory::

    DIR/manifest.json              command, settings, model identities, data fingerprint (refuses a mix)
    DIR/shards/<key>.jsonl         a header line (the records' count and SHA-256 checksums), then one JSON record
                                   per job of a finished shard, keyed by the shard's content
    DIR/shards/<key>.safetensors   the shard's tensors (full logits), where it has any
    DIR/steps/<key>.json           results of other finished steps (a fact check, say)
DIR/states/<name>.safetensors  the latest saved state of a long computation (a fit's running sums)

Every file is written to a temporary name in the same folder, flushed to disk and renamed over its final name,
so a reader sees either nothing or the whole file: a shard cut off by a kill is missing and is redone, never
half-read. A shard damaged after it was written (cut, edited, overwritten, a line copied over another) fails its
checksums or its records' checks when read: it is reported in one line (a :class:`CorruptShardWarning`) and
redone, never used. Shards of 0.2 run directories (manifest version 1) have no header; they are still read,
each record checked for its fields, but without a checksum an edited value in one cannot be told; in a run
directory of this version, a shard without its header is corrupt.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save, save_file

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.runs.fingerprint import canonical, fingerprint, model_fingerprint
from patchscopes.storage import atomic_write, check_writable, write_text_atomic

T = TypeVar("T")

MANIFEST_FILE = "manifest.json"
FORMAT = "patchscopes-run"
VERSION = 2
"""2: shard files start with a header of checksums (1: 0.2's shards, records only)."""
SHARD_HEADER = "patchscopes-shard"
SHARD_FIELDS = ("top_tokens", "top_token_ids", "top_probs", "generated_text", "generated_token_ids")
"""The fields every shard record must have (0.2's records lack the later ``answer_probs`` and ``relevancy``)."""
_COMPARED = ("command", "settings", "models", "data")


class RunDir:
    """A run directory: its manifest and finished shards. Open one with :meth:`open`.

    Attributes:
        path: The folder.
        manifest: The manifest (as written in ``manifest.json``).
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        command: str,
        settings: dict,
        models: Sequence[LanguageModel] = (),
        data: object = None,
    ) -> RunDir:
        """Open ``path`` for a run, creating it, or resuming it when it holds the same run.

        Args:
            path: The folder (created if missing).
            command: What runs (a CLI command or a function's name).
            settings: Every setting that changes the results (not output paths, progress bars or workers).
            models: The models the run uses; their identities (:func:`model_fingerprint`) go in the manifest.
            data: The inputs (texts, relations, paths of data files...); only their fingerprint is kept.

        Raises:
            PatchscopesError: The folder holds a run of another command, settings, model or data, is not a
                run directory, or cannot be created or written.
        """
        path = Path(path)
        manifest = {
            "format": FORMAT, "version": VERSION, "command": command, "settings": canonical(settings),
            "models": [model_fingerprint(m) for m in models], "data": fingerprint(data),
        }
        file = path / MANIFEST_FILE
        if file.is_file():
            try:
                old = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise PatchscopesError(f"{file} is not a readable manifest: {err}",
                                       hint="give another --run-dir, or delete this one") from err
            if old.get("format") != FORMAT:
                raise PatchscopesError(f"{path} is not a patchscopes run directory")
            differ = [key for key in _COMPARED if old.get(key) != json.loads(json.dumps(manifest[key]))]
            if differ:
                raise PatchscopesError(
                    f"{path} holds a run of {_describe_difference(old, manifest, differ)}; its shards cannot be "
                    "mixed with this run's",
                    hint="give another --run-dir (or delete this one to start afresh)",
                )
            return cls(path, old)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise PatchscopesError(f"{path} exists and is not a run directory (it has no {MANIFEST_FILE})",
                                   hint="give a new or empty folder as --run-dir")
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        check_writable(path, "the run directory", folder=True)
        try:
            write_text_atomic(file, json.dumps(manifest, indent=1, ensure_ascii=False))
        except OSError as err:
            raise PatchscopesError(f"could not create the run directory {path}: {err.strerror or err}",
                                   hint="give a --run-dir in a folder you can write in") from err
        return cls(path, manifest)

    # -- shards ------------------------------------------------------------------------------------------------
    def _shard(self, key: str, suffix: str) -> Path:
        return self.path / "shards" / f"{key}{suffix}"

    def finished(self) -> list[str]:
        """Keys of the finished shards."""
        folder = self.path / "shards"
        return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []

    def read_shard(self, key: str, count: int | None = None) -> tuple[list[dict], dict[str, torch.Tensor]] | None:
        """The records and tensors of a finished shard, or ``None`` if it has not finished or is corrupt.

        A corrupt shard (see the module's docstring) is reported with a :class:`CorruptShardWarning` naming the
        file and what is wrong, and ``None`` is returned, so that the caller runs it again.

        Args:
            key: The shard's key.
            count: The number of records the shard must hold (``None``: any).
        """
        file = self._shard(key, ".jsonl")
        if not file.is_file():
            return None
        try:
            return self._check_shard(file, self._shard(key, ".safetensors"), count)
        except CorruptShard as err:
            warnings.warn(f"{file}: corrupt shard ({err}); running it again", CorruptShardWarning, stacklevel=2)
            return None

    def _check_shard(self, file: Path, tensors_file: Path, count: int | None):
        try:
            data = file.read_bytes()
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptShard(f"not UTF-8 text at byte {err.start}") from None
        except OSError as err:
            raise CorruptShard(f"unreadable: {err.strerror or err}") from None
        first, _, body = text.partition("\n")
        header = _json_line(first, 1) if first.startswith(f'{{"{SHARD_HEADER}"') else None
        if header is None:
            if self.manifest.get("version", 1) >= 2:
                raise CorruptShard("its header line is missing")
            body, tensors_sum = text, None  # a 0.2 shard: no checksums, the records are checked below
        else:
            if not isinstance(header, dict) or not isinstance(header.get("records"), int):
                raise CorruptShard("its header line is malformed")
            if hashlib.sha256(body.encode("utf-8")).hexdigest() != header.get("sha256"):
                raise CorruptShard("its records do not match their checksum: cut, edited or rewritten")
            tensors_sum = header.get("tensors_sha256")
        lines = body.splitlines()
        records = [_json_line(line, k + (1 if header is None else 2)) for k, line in enumerate(lines) if line]
        for k, record in enumerate(records):
            missing = [f for f in SHARD_FIELDS if not isinstance(record, dict) or f not in record]
            if missing:
                raise CorruptShard(f"record {k + 1} lacks {', '.join(missing)}")
        for expected in (header or {}).get("records"), count:
            if expected is not None and len(records) != expected:
                raise CorruptShard(f"it holds {len(records)} records, not {expected}")
        if tensors_sum is None:  # no tensors, or a 0.2 shard's unchecked ones
            return records, (_load_tensors(tensors_file.read_bytes(), tensors_file.name)
                             if header is None and tensors_file.is_file() else {})
        try:
            blob = tensors_file.read_bytes()
        except OSError:
            raise CorruptShard(f"its tensors file {tensors_file.name} is missing") from None
        if hashlib.sha256(blob).hexdigest() != tensors_sum:
            raise CorruptShard(f"its tensors file {tensors_file.name} does not match its checksum")
        return records, _load_tensors(blob, tensors_file.name)

    def write_shard(self, key: str, records: Iterable[dict], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write a finished shard: its tensors first, then its records under a header of checksums of both, so that
        the records file marks it complete and proves it whole."""
        tensors_sum = None
        if tensors:
            blob = save({k: v.contiguous() for k, v in tensors.items()})
            tensors_sum = hashlib.sha256(blob).hexdigest()
            atomic_write(self._shard(key, ".safetensors"), lambda tmp: tmp.write_bytes(blob))
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        header = {SHARD_HEADER: VERSION, "records": body.count("\n"),
                  "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(), "tensors_sha256": tensors_sum}
        write_text_atomic(self._shard(key, ".jsonl"), json.dumps(header) + "\n" + body)

    # -- other steps -------------------------------------------------------------------------------------------
    def cached(self, name: str, key: object, compute: Callable[[], T]) -> T:
        """The JSON-ready result of a step: read back if a previous run finished it, else computed and saved.

        Args:
            name: The step's name (a readable prefix of the file name).
            key: What the step's result depends on (fingerprinted).
            compute: Computes the result (JSON-ready: dicts, lists, strings, numbers, booleans, None).
        """
        file = self.path / "steps" / f"{name}-{fingerprint(key)[:24]}.json"
        if file.is_file():
            try:
                return json.loads(file.read_text(encoding="utf-8"))
            except ValueError:  # not UTF-8 or not JSON: damaged after it was written
                warnings.warn(f"{file}: corrupt step (not readable JSON); computing it again", CorruptShardWarning,
                              stacklevel=2)
        value = compute()
        write_text_atomic(file, json.dumps(value, ensure_ascii=False))
        return json.loads(json.dumps(value))  # the same form a resumed run reads back


    # -- states of long computations ---------------------------------------------------------------------------
    def save_state(self, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Save the state of a long computation (tensors, and JSON-ready ``meta``), replacing the previous one."""
        atomic_write(self.path / "states" / f"{name}.safetensors",
                     lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                                           metadata={"state": json.dumps(meta)}))

    def load_state(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The state saved last under ``name`` (tensors, meta), or ``None``."""
        file = self.path / "states" / f"{name}.safetensors"
        if not file.is_file():
            return None
        with safe_open(str(file), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["state"])
        return load_file(file), meta

    def file(self, name: str) -> Path:
        """A path in the run directory for a step that keeps its own file (a tuned lens's checkpoint)."""
        return self.path / name


class CorruptShardWarning(UserWarning):
    """A shard of a run directory failed its checks when read back; it is run again."""


class CorruptShard(Exception):
    """Why a shard file cannot be used (turned into a :class:`CorruptShardWarning` by :meth:`RunDir.read_shard`)."""


def _json_line(line: str, number: int) -> object:
    try:
        return json.loads(line)
    except ValueError:
        raise CorruptShard(f"line {number} is not JSON") from None


def _load_tensors(blob: bytes, name: str) -> dict[str, torch.Tensor]:
    try:
        return load(blob)
    except Exception:  # safetensors raises its own error types on a damaged file
        raise CorruptShard(f"its tensors file {name} is not readable safetensors") from None


def _describe_difference(old: dict, new: dict, differ: list[str]) -> str:
    parts = []
    if "command" in differ:
        parts.append(f"another command ({old.get('command')!r}, not {new['command']!r})")
    if "settings" in differ:
        a, b = old.get("settings") or {}, json.loads(json.dumps(new["settings"]))
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        parts.append("other settings (" + ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys[:6]) + ")")
    if "models" in differ:
        a_names = [m.get("name") for m in old.get("models", [])]
        b_names = [m["name"] for m in new["models"]]
        parts.append(f"another model ({', '.join(map(str, a_names))}, not {', '.join(b_names)})"
                     if a_names != b_names else "another model (same name, other weights, dtype or config)")
    if "data" in differ:
        parts.append("other data (the input's fingerprint differs)")
    return ", ".join(parts)


def open_run_dir(
    run_dir: RunDir | str | Path | None,
    *,
    command: str,
    settings: dict,
    models: Sequence[LanguageModel] = (),
    data: object = None,
) -> RunDir | None:
    """``None`` stays ``None``, an open :class:`RunDir` is used as it is, and a path is opened (:meth:`RunDir.open`)."""
    if run_dir is None or isinstance(run_dir, RunDir):
        return run_dir
    return RunDir.open(run_dir, command=command, settings=settings, models=models, data=data)


NOT_SETTINGS = ("executor", "run_dir", "progress")
"""Arguments that never change a run's results, left out of its manifest."""


def settings_of(arguments: dict, exclude: Sequence[str] = ()) -> dict:
    """A function's arguments (its ``locals()`` on entry) as run settings, without those that do not change the
    results (:data:`NOT_SETTINGS`) and those in ``exclude`` (models and data, recorded on their own).

    A :class:`~patchscopes.runs.RunOptions` in ``options`` stands for its ``engine`` and ``budget`` (the settings
    0.2 recorded as separate arguments, so its run directories still resume; a fit, which runs no patches, puts
    both in ``exclude``)."""
    settings = {k: v for k, v in arguments.items() if k not in ("options", "legacy")}
    options = arguments.get("options")
    if options is not None and hasattr(options, "run_kwargs"):
        settings.update(engine=options.engine, budget=options.budget)
    return {k: v for k, v in settings.items() if k not in NOT_SETTINGS and k not in exclude}
