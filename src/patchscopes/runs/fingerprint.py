"""Stable fingerprints: of settings and data (:func:`fingerprint`), of files, and of a model (its identity).

A fingerprint is a SHA-256 over a canonical form of a value, so the same settings, data or model give the same
string in every process and on every machine. Run directories compare them to refuse mixing runs.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.models.identity import model_shape, spaced_sample

_SAMPLES_PER_TENSOR = 64


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise PatchscopesError(f"cannot fingerprint {path}: no such file")
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def canonical(value: object) -> object:
    """A JSON-ready form of ``value`` that says what it is, not where it lives in memory.

    Handles None, numbers, strings, lists, tuples, sets, dicts, dataclasses, enums, paths (their file contents),
    tensors and arrays (their bytes), models (:func:`model_fingerprint`), and objects with a ``fingerprint()``
    method. Other objects (functions, say) stand for their type, qualified name and ``name`` attribute.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, Path):
        return {"file": file_fingerprint(value)} if value.exists() else {"path": str(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_fingerprint(value)}
    if isinstance(value, np.ndarray):
        return {"tensor": tensor_fingerprint(torch.from_numpy(np.ascontiguousarray(value)))}
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, LanguageModel):
        return {"model": model_fingerprint(value)}
    if hasattr(value, "fingerprint") and callable(value.fingerprint):
        return {"fingerprint": value.fingerprint()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__qualname__, **fields}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    kind = type(value)
    return {"object": f"{kind.__module__}.{kind.__qualname__}", "name": getattr(value, "name", None),
            "function": getattr(value, "__qualname__", None)}


def fingerprint(value: object) -> str:
    """SHA-256 (hex) of :func:`canonical` ``(value)``."""
    text = json.dumps(canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(model: LanguageModel) -> dict:
    """What tells one model from another in a run directory: name, family, sizes, dtype, config, tokenizer and a
    fingerprint of its weights (stricter than :func:`patchscopes.models.identity.model_identity`, what saved lenses
    record, which survives a change of dtype).

    The weights' fingerprint hashes the dtype, shape and a fixed sample of elements of every parameter (the
    first and last and evenly spaced ones), so it is cheap even for a model spread over several GPUs, and two
    models of the same shape with different weights, or in different dtypes, differ.
    """
    digest = hashlib.sha256()
    for name, param in model.hf.named_parameters():
        sample = spaced_sample(param.detach().reshape(-1), _SAMPLES_PER_TENSOR).cpu().contiguous()
        digest.update(f"{name}{param.dtype}{tuple(param.shape)}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    config = model.hf.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash"):
        config.pop(volatile, None)
    return {
        **model_shape(model),
        "dtype": str(model.dtype),
        "config": fingerprint(config),
        "tokenizer": fingerprint(model.tokenizer.get_vocab()),
        "weights": digest.hexdigest(),
    }


def __getattr__(name: str):
    if name == "model_identity":  # 0.2's name, which meant two things (see patchscopes.models.identity)
        import warnings

        warnings.warn("patchscopes.runs.model_identity is now patchscopes.runs.model_fingerprint", DeprecationWarning,
                      stacklevel=2)
        return model_fingerprint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
