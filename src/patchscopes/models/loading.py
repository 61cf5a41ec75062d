"""Loading models: embedded aliases, GGUF files (dequantized once and cached), local folders and hub ids."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models.architectures import ArchitectureSpec, registered_architecture
from patchscopes.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, converted_dir, is_converted, mark_converted
from patchscopes.models.language_model import LanguageModel
from patchscopes.models.proof import FastPathSupport

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


# Proofs of checkpoints loaded from disk in this process, by (folder, its modification time, device, dtype,
# layout): loading the same weights again reuses the outcome instead of proving them again.
_PROVEN: dict[tuple, FastPathSupport] = {}

# Proofs of converted checkpoints (the cache folders of GGUF files) are also kept on disk, beside the weights:
# a later process loading the same folder, on the same device and dtype, with the same torch, transformers and
# patchscopes model code, reuses the outcome instead of running the proof's forwards again.
PROOF_FILE = "patchscopes-proofs.json"


@functools.cache
def _code_version() -> str:
    """What a stored proof depends on besides the weights: torch, transformers and this package's model code."""
    import transformers

    digest = hashlib.sha256(f"{torch.__version__}:{transformers.__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _stored_proof_key(hf_model, device: str) -> str:
    layout = registered_architecture(hf_model)
    return json.dumps([_code_version(), device, str(hf_model.dtype), type(hf_model).__name__,
                       repr(layout) if layout is not None else "discovered"])


def _read_stored_proof(folder: Path, key: str) -> FastPathSupport | None:
    """The proof stored in ``folder`` under ``key``; ``None`` when there is none or the file is unreadable."""
    try:
        record = json.loads((folder / PROOF_FILE).read_text(encoding="utf-8")).get(key)
        return FastPathSupport(**record) if isinstance(record, dict) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _store_proof(folder: Path, key: str, proof: FastPathSupport) -> None:
    """Add ``proof`` to the proofs stored in ``folder`` (atomically; a folder that cannot be written is skipped)."""
    path = folder / PROOF_FILE
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        records = records if isinstance(records, dict) else {}
    except (OSError, ValueError):
        records = {}
    records[key] = dataclasses.asdict(proof)
    try:
        fd, tmp = tempfile.mkstemp(prefix=PROOF_FILE + ".", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-tensor progress bars and info logs while loading."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _as_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return torch.float32 if str(device).startswith("cpu") else None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise PatchscopesError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _convert_gguf(gguf_file: Path) -> Path:
    """Dequantize a GGUF file once and cache it as safetensors plus tokenizer files."""
    target = converted_dir(gguf_file)
    if is_converted(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
                )
        except Exception as err:  # the gguf reader raises many kinds of errors on a bad file
            missing = isinstance(err, ImportError) or "pip install" in str(err)
            raise PatchscopesError(
                f"could not read the GGUF file {gguf_file}: {type(err).__name__}: {err}",
                hint="install the missing package named above" if missing else
                "the file may be truncated or corrupt, or of an architecture transformers cannot convert; "
                "download or reinstall it",
            ) from err
        # The weights are dequantized: drop the GGUF quantizer so the model saves as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with quiet_transformers():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mark_converted(tmp, gguf_file)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_pretrained(source: str | Path, kwargs: dict):
    """The causal LM at ``source``; for a multimodal model with no causal-LM class (LLaVA, Qwen-VL...), its
    image-text-to-text model, whose language part patchscopes reads with text prompts."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``): only cached hub models load."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


def alias_guesses(name: str) -> list[str]:
    """The embedded aliases ``name`` may be a typo or a shortening of, closest first."""
    key = name.strip().lower()
    starts = [alias for alias in EMBEDDED_MODELS if alias.startswith(key) or key.startswith(alias)]
    close = difflib.get_close_matches(key, list(EMBEDDED_MODELS), n=3, cutoff=0.6)
    return list(dict.fromkeys([*starts, *close]))


def unknown_model_error(name: str, *, offline: bool = False) -> PatchscopesError:
    """The error for a name that is no alias, file or folder (and, ``offline``, not in the hub's cache)."""
    guesses = alias_guesses(name)
    guess = f" — did you mean {guesses[0]!r}?" if guesses else ""
    where = (": not an alias, a file or a folder, and not in the local Hugging Face cache (the hub is offline, "
             "HF_HUB_OFFLINE=1)") if offline and not guesses else ""
    return PatchscopesError(
        f"unknown model {name!r}{guess}{where}",
        hint=f"the aliases are {', '.join(EMBEDDED_MODELS)} (see `patchscopes models`); or give a .gguf file, a "
        "model folder, or a hub id",
    )


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    spec: ArchitectureSpec | None = None,
) -> LanguageModel:
    """Load a causal language model for patching.

    Args:
        name: An embedded alias (``smollm2-135m``, the default, or ``gemma3-270m``), a path to a ``.gguf``
            file, a local Hugging Face model folder, or a Hugging Face hub id (where the hub is reachable).
        device: ``cpu``, ``cuda``, ``cuda:1``..., or ``auto`` to spread a large model over all GPUs.
        dtype: ``float32`` (the default on CPU), ``bfloat16`` or ``float16``; by default on GPUs, the
            checkpoint's own dtype.
        spec: An architecture description for a family patchscopes does not know.

    The layout is proved on a few tokens at load (:mod:`~patchscopes.models.proof`). For an embedded model or a
    ``.gguf`` file, the outcome is stored beside the converted weights (``patchscopes-proofs.json``), so a
    later process on the same device and dtype, with the same torch, transformers and patchscopes model code,
    skips the proof's forwards; delete that file to prove again.

    Returns:
        The model, in evaluation mode.

    Raises:
        PatchscopesError: The name is unknown, an embedded package is missing (the message prints the
            install command), the GGUF file is corrupt, or the architecture is unknown.
    """
    from transformers import AutoTokenizer

    if not isinstance(name, str) or not name.strip():
        raise PatchscopesError("the model name is empty", hint=f"use e.g. {DEFAULT_MODEL!r}")
    torch_dtype = _as_dtype(dtype, device)
    source: str | Path = name
    display = name
    if name in EMBEDDED_MODELS:
        source = _convert_gguf(EMBEDDED_MODELS[name].gguf_path())
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise PatchscopesError(f"no such GGUF file: {name}")
        source = _convert_gguf(path.resolve())
    elif Path(name).expanduser().exists():
        source = Path(name).expanduser()
        if not (source / "config.json").is_file():
            raise PatchscopesError(
                f"{name} is not a Hugging Face model folder (it has no config.json)",
                hint="point to a folder written by save_pretrained, or to a .gguf file",
            )
    elif "/" not in name and alias_guesses(name):
        # A typo of an alias (smollm2 for smollm2-135m), not a hub id: say so rather than ask the hub.
        raise unknown_model_error(name)
    kwargs: dict = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with quiet_transformers():
            hf_model = _from_pretrained(source, kwargs)
    except PatchscopesError:
        raise
    except Exception as err:
        if isinstance(err, OSError) and source == name and hub_offline():
            raise unknown_model_error(name, offline=True) from err
        raise PatchscopesError(
            f"could not load model {name!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            hint=f"use an embedded alias ({', '.join(EMBEDDED_MODELS)}), a .gguf file, a local model folder, "
            "or a hub id where the Hugging Face hub is reachable",
        ) from err
    if device != "auto":
        try:
            hf_model = hf_model.to(device)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise PatchscopesError(
                f"could not move the model to device {device!r}: {err}",
                hint="use 'cpu', or a device this machine has (see torch.cuda.is_available())",
            ) from err
    key = stored_key = None
    if isinstance(source, Path) and source.is_dir():
        key = (str(source.resolve()), (source / "config.json").stat().st_mtime_ns, device, str(hf_model.dtype), spec)
        if spec is None and device != "auto" and is_converted(source):
            stored_key = _stored_proof_key(hf_model, device)
    proof = _PROVEN.get(key)
    if proof is None and stored_key is not None:
        proof = _read_stored_proof(source, stored_key)
    model = LanguageModel(hf_model, tokenizer, name=display, spec=spec, proof=proof)
    if key is not None:
        _PROVEN[key] = model.fast_path
    if stored_key is not None and proof is None:
        _store_proof(source, stored_key, model.fast_path)
    return model
