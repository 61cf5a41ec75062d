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

The description is validated when a model is loaded (:func:`resolve_architecture`), so a wrong path fails
at once with a message rather than deep inside a sweep.
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
        final_norm: Attribute path to the norm applied after the last block.
        unembed: Attribute path to the unembedding (``lm_head``) linear layer.
        embed: Attribute path to the token embedding.
        logit_softcap: Name of the config attribute holding the final logit soft-capping value, if any
            (Gemma 2 and 3); the readout applies ``tanh(logits / cap) * cap`` as the model does.
        mlp: Attribute path, inside a block, to its MLP (writes at the ``"mlp"`` site, causal tracing).
        attention: Attribute path, inside a block, to its self-attention module (``"attn"`` writes,
            attention knockout).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    final_norm: str
    unembed: str
    embed: str
    logit_softcap: str | None = None
    mlp: str = "mlp"
    attention: str = "self_attn|attn|attention"


_LLAMA_LIKE = dict(blocks="model.layers", final_norm="model.norm", unembed="lm_head", embed="model.embed_tokens")

BUILTIN_ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        "gpt2", ("gpt2",), blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
        embed="transformer.wte",
    ),
    ArchitectureSpec(
        "gptj", ("gptj",), blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head",
        embed="transformer.wte",
    ),
    ArchitectureSpec(
        "gpt-neox", ("gpt_neox",), blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head|embed_out", embed="gpt_neox.embed_in",
    ),
    ArchitectureSpec("llama", ("llama",), **_LLAMA_LIKE),
    ArchitectureSpec("mistral", ("mistral",), **_LLAMA_LIKE),
    ArchitectureSpec("qwen2", ("qwen2", "qwen3"), **_LLAMA_LIKE),
    ArchitectureSpec("gemma", ("gemma",), **_LLAMA_LIKE),
    ArchitectureSpec("gemma2", ("gemma2",), **_LLAMA_LIKE, logit_softcap="final_logit_softcapping"),
    ArchitectureSpec("gemma3", ("gemma3_text",), **_LLAMA_LIKE, logit_softcap="final_logit_softcapping"),
)

_REGISTRY: dict[str, ArchitectureSpec] = {}


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


for _spec in BUILTIN_ARCHITECTURES:
    register_architecture(_spec)


def known_model_types() -> list[str]:
    """The ``config.model_type`` values with a registered description, sorted."""
    return sorted(_REGISTRY)


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


@dataclass(frozen=True)
class ResolvedArchitecture:
    """The modules of one loaded model, found through its :class:`ArchitectureSpec`."""

    spec: ArchitectureSpec
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module
    embed: nn.Module
    softcap: float | None


def resolve_architecture(model: nn.Module, spec: ArchitectureSpec | None = None) -> ResolvedArchitecture:
    """Find and validate the parts of ``model``.

    Args:
        model: A Hugging Face causal language model (``*ForCausalLM``).
        spec: The description to use; by default the one registered for ``model.config.model_type``.

    Raises:
        UnknownArchitectureError: No description is registered for the model type.
        PatchscopesError: The description does not match the model (a path is missing, the number of
            blocks or the sizes disagree with the config).
    """
    config = model.config
    model_type = getattr(config, "model_type", None)
    if spec is None:
        spec = _REGISTRY.get(model_type)
    if spec is None:
        raise UnknownArchitectureError(
            f"unknown architecture: {type(model).__name__} (config.model_type={model_type!r}); "
            f"known model types: {', '.join(known_model_types())}",
            hint=(
                "describe it once with patchscopes.register_architecture(ArchitectureSpec(name=..., "
                f"model_types=({model_type!r},), blocks='model.layers', final_norm='model.norm', "
                "unembed='lm_head', embed='model.embed_tokens')), giving the attribute paths of its decoder "
                "blocks, final norm, unembedding and token embedding"
            ),
        )
    try:
        blocks = get_module(model, spec.blocks)
        final_norm = get_module(model, spec.final_norm)
        unembed = get_module(model, spec.unembed)
        embed = get_module(model, spec.embed)
    except AttributeError as err:
        raise PatchscopesError(
            f"the {spec.name!r} description does not fit {type(model).__name__}: {err}",
            hint="fix the attribute paths of its ArchitectureSpec",
        ) from err
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise PatchscopesError(f"{spec.blocks!r} of {type(model).__name__} is not a non-empty ModuleList")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    if n_layers is not None and n_layers != len(blocks):
        raise PatchscopesError(
            f"{type(model).__name__} has {len(blocks)} blocks at {spec.blocks!r} but its config says {n_layers}"
        )
    weight = getattr(unembed, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise PatchscopesError(f"{spec.unembed!r} of {type(model).__name__} is not a linear layer")
    softcap = getattr(text_config, spec.logit_softcap, None) if spec.logit_softcap else None
    return ResolvedArchitecture(spec, blocks, final_norm, unembed, embed, softcap)
