"""Declarative descriptions of model families.

A family is described by where its parts live, as attribute paths on the Hugging Face ``*ForCausalLM``
object: the list of decoder blocks, the final norm, the unembedding and the token embedding. Nothing else
is architecture-specific: hooks are placed on the blocks found here, so a new family needs one
:class:`ArchitectureSpec` and no new code::

    from patchscopes import ArchitectureSpec, register_architecture

    register_architecture(ArchitectureSpec(
        name="my-family", model_types=("my_model",),
        blocks="model.layers", final_norm="model.norm", unembed="lm_head", embed="model.embed_tokens",
    ))

A description is found by ``config.model_type``, then by the model's class name (a ``LlamaForCausalLM``
whose config carries another model type is still a Llama); a family with no description has its layout
found from the model itself (:mod:`patchscopes.models.discovery`). Either way the paths are validated when
a model is loaded (:func:`resolve_architecture`) and then proved on a few tokens
(:mod:`patchscopes.models.proof`), so a wrong layout fails at once with a message rather than deep inside a
sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from patchscopes.errors import PatchscopesError, UnknownArchitectureError


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where the parts of one model family live.

    Attributes:
        name: A short name for the family, used in messages.
        model_types: The ``config.model_type`` values this description covers.
        blocks: Attribute path to the ``nn.ModuleList`` of decoder blocks. Any path may list
            alternatives separated by ``|``, e.g. ``"lm_head|embed_out"``.
        final_norm: Attribute path to the norm applied after the last block; several modules applied in turn
            are joined by ``+`` (a norm, then a projection), and ``""`` means there is none.
        unembed: Attribute path to the unembedding (``lm_head``) linear layer.
        embed: Attribute path to the token embedding.
        logit_softcap: Name of the config attribute holding the final logit soft-capping value, if any
            (Gemma 2 and 3); the readout applies ``tanh(logits / cap) * cap`` as the model does.
        logit_scale: Name of the config attribute the model multiplies its logits by (Cohere's
            ``logit_scale``), or ``"1/NAME"`` for one it divides them by (Granite's ``logits_scaling``).
        classes: Model class names this description covers whatever their ``config.model_type``.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    final_norm: str
    unembed: str
    embed: str
    logit_softcap: str | None = None
    logit_scale: str | None = None
    classes: tuple[str, ...] = ()


_LLAMA_LIKE = dict(blocks="model.layers", final_norm="model.norm", unembed="lm_head", embed="model.embed_tokens")

BUILTIN_ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        "gpt2", ("gpt2",), blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
        embed="transformer.wte", classes=("GPT2LMHeadModel",),
    ),
    ArchitectureSpec(
        "gptj", ("gptj",), blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
        embed="transformer.wte", classes=("GPTJForCausalLM",),
    ),
    ArchitectureSpec(
        "gpt-neox", ("gpt_neox",), blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head|embed_out", embed="gpt_neox.embed_in", classes=("GPTNeoXForCausalLM",),
    ),
    ArchitectureSpec("llama", ("llama",), **_LLAMA_LIKE, classes=("LlamaForCausalLM",)),
    ArchitectureSpec("mistral", ("mistral",), **_LLAMA_LIKE, classes=("MistralForCausalLM",)),
    ArchitectureSpec("qwen2", ("qwen2", "qwen3"), **_LLAMA_LIKE, classes=("Qwen2ForCausalLM", "Qwen3ForCausalLM")),
    ArchitectureSpec("gemma", ("gemma",), **_LLAMA_LIKE, classes=("GemmaForCausalLM",)),
    ArchitectureSpec("gemma2", ("gemma2",), **_LLAMA_LIKE, logit_softcap="final_logit_softcapping",
                     classes=("Gemma2ForCausalLM",)),
    ArchitectureSpec("gemma3", ("gemma3_text",), **_LLAMA_LIKE, logit_softcap="final_logit_softcapping",
                     classes=("Gemma3ForCausalLM",)),
)

_REGISTRY: dict[str, ArchitectureSpec] = {}
_BY_CLASS: dict[str, ArchitectureSpec] = {}


def register_architecture(spec: ArchitectureSpec, *, replace: bool = False) -> None:
    """Make a family known to :func:`patchscopes.load_model`.

    Args:
        spec: The description; it covers every ``config.model_type`` in ``spec.model_types``.
        replace: Allow replacing an existing description of the same model type.

    Raises:
        PatchscopesError: If a model type is already described and ``replace`` is false.
    """
    for model_type in spec.model_types:
        if model_type in _REGISTRY and not replace:
            raise PatchscopesError(
                f"model type {model_type!r} is already described by {_REGISTRY[model_type].name!r}",
                hint="pass replace=True to override it",
            )
        _REGISTRY[model_type] = spec
    for name in spec.classes:
        _BY_CLASS[name] = spec


for _spec in BUILTIN_ARCHITECTURES:
    register_architecture(_spec)


def known_model_types() -> list[str]:
    """The ``config.model_type`` values with a registered description, sorted."""
    return sorted(_REGISTRY)


def registered_architecture(model: nn.Module) -> ArchitectureSpec | None:
    """The description registered for ``model``: by ``config.model_type``, then by class name; else ``None``."""
    spec = _REGISTRY.get(getattr(model.config, "model_type", None))
    return spec if spec is not None else _BY_CLASS.get(type(model).__name__)


def text_config(config):
    """The config of the language part: ``config.get_text_config()`` where the model is composite."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_layers(config) -> int | None:
    """The number of decoder layers a (text) config declares, or ``None``."""
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted attribute path from ``root``; raise ``AttributeError`` naming the missing part.

    ``path`` may list alternatives separated by ``|`` (names differ across transformers versions); the
    first that resolves is used.
    """
    if "|" in path:
        errors = []
        for alternative in path.split("|"):
            try:
                return get_module(root, alternative)
            except AttributeError as err:
                errors.append(str(err))
        raise AttributeError("; ".join(errors))
    module: object = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(f"{type(module).__name__} has no attribute {part!r} (path {path!r})")
        module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise AttributeError(f"{path!r} is a {type(module).__name__}, not a torch module")
    return module


class FinalNormChain(nn.Module):
    """Several modules applied in turn after the last block (a norm, then a projection), or none at all."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        object.__setattr__(self, "_chain", modules)  # not submodules: the model owns them

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for module in object.__getattribute__(self, "_chain"):
            hidden = module(hidden)
        return hidden


@dataclass(frozen=True)
class ResolvedArchitecture:
    """The modules of one loaded model, found through its :class:`ArchitectureSpec`.

    Attributes:
        spec: The description they were found by.
        blocks: The decoder blocks.
        final_norm: What the model applies between the last block and the unembedding.
        unembed: The unembedding.
        embed: The token embedding.
        softcap: The final logit soft-capping value, if any.
        logit_scale: The factor the model multiplies its logits by, if any.
    """

    spec: ArchitectureSpec
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    embed: nn.Module
    softcap: float | None
    logit_scale: float | None = None

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own output transforms of the unembedding's output: a scale, then soft-capping."""
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _unknown(model: nn.Module) -> UnknownArchitectureError:
    model_type = getattr(model.config, "model_type", None)
    return UnknownArchitectureError(
        f"unknown architecture: {type(model).__name__} (config.model_type={model_type!r}); "
        f"known model types: {', '.join(known_model_types())}",
        hint=(
            "describe it once with patchscopes.register_architecture(ArchitectureSpec(name=..., "
            f"model_types=({model_type!r},), blocks='model.layers', final_norm='model.norm', "
            "unembed='lm_head', embed='model.embed_tokens')), giving the attribute paths of its decoder "
            "blocks, final norm, unembedding and token embedding"
        ),
    )


def _config_value(config, spec_value: str | None) -> float | None:
    if not spec_value:
        return None
    invert = spec_value.startswith("1/")
    value = getattr(config, spec_value[2:] if invert else spec_value, None)
    if value is None:
        return None
    return 1.0 / float(value) if invert else float(value)


def resolve_architecture(model: nn.Module, spec: ArchitectureSpec | None = None) -> ResolvedArchitecture:
    """Find and validate the parts of ``model``.

    Args:
        model: A Hugging Face causal language model (``*ForCausalLM``).
        spec: The description to use; by default the one registered for ``model.config.model_type`` or,
            failing that, for the model's class.

    Raises:
        UnknownArchitectureError: No description is given or registered.
        PatchscopesError: The description does not match the model (a path is missing, the number of
            blocks or the sizes disagree with the config).
    """
    spec = spec or registered_architecture(model)
    if spec is None:
        raise _unknown(model)
    try:
        blocks = get_module(model, spec.blocks)
        norms = [get_module(model, path) for path in spec.final_norm.split("+") if path]
        unembed = get_module(model, spec.unembed)
        embed = get_module(model, spec.embed)
    except AttributeError as err:
        raise PatchscopesError(
            f"the {spec.name!r} description does not fit {type(model).__name__}: {err}",
            hint="fix the attribute paths of its ArchitectureSpec",
        ) from err
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise PatchscopesError(f"{spec.blocks!r} of {type(model).__name__} is not a non-empty ModuleList")
    config = text_config(model.config)
    n_layers = config_layers(config)
    if n_layers is not None and n_layers != len(blocks):
        raise PatchscopesError(
            f"{type(model).__name__} has {len(blocks)} blocks at {spec.blocks!r} but its config says {n_layers}"
        )
    weight = getattr(unembed, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise PatchscopesError(f"{spec.unembed!r} of {type(model).__name__} is not a linear layer")
    final_norm = norms[0] if len(norms) == 1 else FinalNormChain(norms)
    return ResolvedArchitecture(spec, blocks, final_norm, unembed, embed, _config_value(config, spec.logit_softcap),
                                _config_value(config, spec.logit_scale))
