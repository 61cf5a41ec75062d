"""Loading models: embedded aliases, GGUF files (dequantized once and cached), local folders and hub ids."""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models.architectures import ArchitectureSpec
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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(gguf_file)
    if is_converted(target):
        return target
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
    key = None
    if isinstance(source, Path) and source.is_dir():
        key = (str(source.resolve()), (source / "config.json").stat().st_mtime_ns, device, str(hf_model.dtype), spec)
    model = LanguageModel(hf_model, tokenizer, name=display, spec=spec, proof=_PROVEN.get(key))
    if key is not None:
        _PROVEN[key] = model.fast_path
    return model
