"""Loading models and the :class:`LanguageModel` wrapper the engine works on."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from patchscopes.architectures import ArchitectureSpec, resolve_architecture
from patchscopes.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    converted_dir,
    is_converted,
    mark_converted,
)
from patchscopes.errors import PatchscopesError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class LanguageModel:
    """A causal language model, its tokenizer and the location of its parts.

    Most users get one from :func:`load_model`; wrapping an already loaded Hugging Face model works too::

        lm = LanguageModel(AutoModelForCausalLM.from_pretrained(...), AutoTokenizer.from_pretrained(...))

    Args:
        hf_model: A Hugging Face ``*ForCausalLM`` model.
        tokenizer: Its tokenizer.
        name: A name for messages and result tables.
        spec: The architecture description; by default the registered one for the model type.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer,
        *,
        name: str | None = None,
        spec: ArchitectureSpec | None = None,
    ) -> None:
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
        self.arch = resolve_architecture(hf_model, spec)
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._accepts_logits_to_keep = "logits_to_keep" in params

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, family={self.arch.spec.name!r}, layers={self.num_layers}, "
            f"d={self.hidden_size}, device={self.device}, dtype={self.dtype})"
        )

    # -- sizes ------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, the number of decoder blocks."""
        return len(self.arch.blocks)

    @property
    def hidden_size(self) -> int:
        """d, the width of the residual stream."""
        return int(self.arch.unembed.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """The number of logits the unembedding produces."""
        return int(self.arch.unembed.weight.shape[0])

    @property
    def device(self) -> torch.device:
        """The device of the token embedding (where inputs go)."""
        return self.arch.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the residual stream."""
        return self.arch.embed.weight.dtype

    # -- tokens -----------------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, with the special tokens the tokenizer adds (positions index these)."""
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded on its own."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation (from the generation config and the tokenizer)."""
        ids: set[int] = set()
        gen = getattr(self.hf, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def pad_token_id(self) -> int:
        """A token id for padding (never attended to)."""
        for value in (getattr(self.tokenizer, "pad_token_id", None), *sorted(self.eos_token_ids)):
            if isinstance(value, int):
                return value
        return 0

    # -- computation ------------------------------------------------------------------------------------
    def final_normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm applied to residual-stream vectors (what the unembedding reads)."""
        hidden = hidden.to(self.arch.final_norm.weight.device if hasattr(self.arch.final_norm, "weight")
                           else self.device)
        return self.arch.final_norm(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and soft-capping applied to residual-stream vectors (logit lens)."""
        logits = self.arch.unembed(self.final_normed(hidden))
        if self.arch.softcap is not None:
            logits = torch.tanh(logits / self.arch.softcap) * self.arch.softcap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        logits_to_keep: int | torch.Tensor | None = None,
    ):
        """One forward pass of the Hugging Face model; returns ``(logits, cache)``."""
        kwargs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": None if attention_mask is None else attention_mask.to(self.device),
            "position_ids": None if position_ids is None else position_ids.to(self.device),
            "use_cache": use_cache,
            self._cache_kwarg: cache,
        }
        if logits_to_keep is not None and self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.hf(**kwargs)
        if not use_cache:
            return out.logits, None
        key = "cache" if self._cache_kwarg == "cache" else "past_key_values"
        return out.logits, out.get(key) if hasattr(out, "get") else getattr(out, key, None)

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Resolve a possibly negative layer index to ``[0, L)``; raise a clear error if out of range."""
        n = self.num_layers
        if not isinstance(layer, (int,)) or isinstance(layer, bool):
            raise PatchscopesError(f"{what} must be an integer, got {layer!r}")
        if not -n <= layer < n:
            raise PatchscopesError(
                f"{what} {layer} is out of range for {self.name} ({n} layers)",
                hint=f"use a layer in 0..{n - 1}, or -1..-{n} to count from the end",
            )
        return layer % n


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    kwargs: dict = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if device == "auto":
        kwargs["device_map"] = "auto"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with quiet_transformers():
            hf_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except PatchscopesError:
        raise
    except Exception as err:
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
    return LanguageModel(hf_model, tokenizer, name=display, spec=spec)
