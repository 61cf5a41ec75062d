"""Shared-prefix attention: rows that share a prompt's prefix attend to its keys and values without a copy per row.

Many rows of a sweep run the same target prefix (the tokens before i*), whose keys and values are computed once
(batch 1). Broadcasting them to every row and concatenating them with the row's own keys, in every layer, copies
the prefix once per row per layer; on a GPU those copies took 28% of a sweep's time. Following Hydragen (Juravsky
et al. 2024, arXiv 2402.05099), attention is decomposed instead:

- over the prefix: the queries of *every* row against the one prefix, a single matrix product per key/value
  head (``(rows × queries) × prefix``), with no copy of the prefix;
- over each row's own keys: an ordinary batched product;
- the two softmax parts merged exactly through their log-sum-exp: with ``lse = logaddexp(lse_prefix, lse_own)``,
  the weights are ``exp(scores − lse)`` on both sides, so the result is the softmax over the concatenation.

How it is wired: :func:`shared_prefix_attention` switches a model's attention implementation, for the duration
of a block, to one registered with Hugging Face's ``AttentionInterface`` (masks are built exactly as for the
model's own ``eager`` or ``sdpa`` implementation). A cache layer that holds a batch-1 prefix calls
:func:`stage` from its ``update`` and returns only the row's own keys; the model's attention call that follows
takes the staged prefix. The masks keep their full width (prefix, then own keys), so sliding windows, padding and
knockout masks apply as before; grouped-query attention and soft-capping are handled; a model whose attention
passes anything else (attention sinks, position biases) is refused, and the load-time proof
(:mod:`~patchscopes.models.proof`) keeps such a model on the copying path with the reason in ``model.fast_path``.
Outside :func:`shared_prefix_attention`, :func:`stage` returns ``False`` and cache layers concatenate as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Iterator

import torch
from transformers.cache_utils import DynamicLayer

SUPPORTED = ("eager", "sdpa")
"""The attention implementations whose masks and results shared-prefix attention reproduces."""
_NAME = "patchscopes_shared_prefix_{}"
_UNSUPPORTED_KWARGS = ("s_aux", "sinks", "position_bias", "attention_bias", "head_mask")


class _Slot:
    """The prefix staged by a cache layer's ``update`` for the attention call that follows it."""

    __slots__ = ("staged",)

    def __init__(self) -> None:
        self.staged: tuple[torch.Tensor, torch.Tensor] | None = None


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("patchscopes_shared_prefix", default=None)


def stage(keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Hand a batch-1 prefix's ``keys`` and ``values`` ``(1, kv_heads, prefix, head_dim)`` to the next attention
    call; ``False`` (nothing staged) outside :func:`shared_prefix_attention`, where the caller concatenates."""
    slot = _SLOT.get()
    if slot is None:
        return False
    slot.staged = (keys, values)
    return True


def attention_implementation(model) -> str | None:
    """The model's attention implementation (``"eager"`` where none is set)."""
    return getattr(model.hf.config, "_attn_implementation", None) or "eager"


def _configs(config) -> list:
    out, todo = [], [config]
    while todo:
        cfg = todo.pop()
        out.append(cfg)
        todo += [sub for key in getattr(cfg, "sub_configs", {}) if (sub := getattr(cfg, key, None)) is not None]
    return out


@contextlib.contextmanager
def shared_prefix_attention(model) -> Iterator[None]:
    """Within the block, ``model``'s attention reads staged prefixes (see the module's docstring).

    Raises:
        ValueError: The model's attention implementation is not one of :data:`SUPPORTED`.
    """
    base = attention_implementation(model)
    if base not in SUPPORTED:
        raise ValueError(f"shared-prefix attention reproduces {', '.join(SUPPORTED)} attention, not {base!r}")
    name = _register(base)
    configs = _configs(model.hf.config)
    before = [cfg.__dict__.get("_attn_implementation_internal") for cfg in configs]
    token = _SLOT.set(_Slot())
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = name
        yield
    finally:
        _SLOT.reset(token)
        for cfg, value in zip(configs, before):
            cfg._attn_implementation_internal = value


def _register(base: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = _NAME.format(base)
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
        AttentionInterface.register(name, _attention)
    return name


def _attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """The attention function registered with Hugging Face: :func:`prefix_attention` over the staged prefix."""
    slot = _SLOT.get()
    staged = None if slot is None else slot.staged
    if staged is None:
        raise RuntimeError("shared-prefix attention was called without a staged prefix (a layer that does not "
                           "read its keys through Cache.update)")
    slot.staged = None
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise RuntimeError(f"shared-prefix attention does not take {name!r}")
    if kwargs.get("dropout") and module.training:
        raise RuntimeError("shared-prefix attention does not apply dropout")
    out = prefix_attention(query, key, value, *staged, attention_mask, scaling=kwargs.get("scaling"),
                           softcap=kwargs.get("softcap"))
    return out, None


def prefix_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix_keys: torch.Tensor,
                     prefix_values: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                     scaling: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """Softmax attention of every row's queries over one shared prefix and the row's own keys.

    Args:
        query: ``(rows, heads, q, d)``.
        key, value: The rows' own keys and values, ``(rows, kv_heads, n, d)``; the queries are the last ``q`` of
            them.
        prefix_keys, prefix_values: The shared prefix, ``(1, kv_heads, P, d)``.
        attention_mask: ``None`` (causal over the own keys, the prefix visible), or a boolean (``True``: attend)
            or additive float mask ``(rows or 1, heads or 1, q, P + n)``.
        scaling: The factor of the scores (default ``d ** -0.5``); ``softcap``: soft-capping of the scores.

    Returns:
        ``(rows, q, heads, d)``, equal to the softmax over the concatenated keys.
    """
    rows, heads, q, dk = query.shape
    kv_heads, own = key.shape[1], key.shape[-2]
    groups, length = heads // kv_heads, prefix_keys.shape[-2]
    scaling = dk ** -0.5 if scaling is None else scaling

    # Prefix: every row's queries against the one prefix, one product per key/value head: (kv, rows·g·q, P).
    grouped = query.view(rows, kv_heads, groups, q, dk)
    flat = grouped.permute(1, 0, 2, 3, 4).reshape(kv_heads, rows * groups * q, dk)
    prefix_scores = torch.matmul(flat, prefix_keys[0].transpose(-1, -2)) * scaling
    prefix_scores = prefix_scores.view(kv_heads, rows, groups, q, length)
    # Own keys: (rows, kv, g, q, n).
    own_scores = torch.matmul(grouped, key[:, :, None].transpose(-1, -2)) * scaling
    if softcap is not None:
        prefix_scores = torch.tanh(prefix_scores / softcap) * softcap
        own_scores = torch.tanh(own_scores / softcap) * softcap
    prefix_scores, own_scores = prefix_scores.float(), own_scores.float()
    if attention_mask is None:
        visible = torch.ones(q, own, dtype=torch.bool, device=query.device).tril(own - q)
        own_scores = own_scores.masked_fill(~visible, float("-inf"))
    else:
        if attention_mask.shape[-1] != length + own:
            raise RuntimeError(f"a mask over {attention_mask.shape[-1]} keys for a prefix of {length} and {own} "
                               "own keys")
        mask_rows, mask_heads = attention_mask.shape[0], attention_mask.shape[1]
        prefix_mask, own_mask = attention_mask[..., :length], attention_mask[..., length:]
        if mask_heads == 1:
            prefix_mask, own_mask = prefix_mask[None], own_mask[:, :, None]
        else:
            prefix_mask = prefix_mask.reshape(mask_rows, kv_heads, groups, q, length).transpose(0, 1)
            own_mask = own_mask.reshape(mask_rows, kv_heads, groups, q, own)
        prefix_scores, own_scores = _masked(prefix_scores, prefix_mask), _masked(own_scores, own_mask)
    # Exact merge: the softmax over [prefix, own] through the log-sum-exp of both parts.
    lse = torch.logaddexp(torch.logsumexp(prefix_scores, -1).permute(1, 0, 2, 3), torch.logsumexp(own_scores, -1))
    prefix_weights = torch.exp(prefix_scores - lse.permute(1, 0, 2, 3)[..., None]).to(value.dtype)
    own_weights = torch.exp(own_scores - lse[..., None]).to(value.dtype)
    dv = value.shape[-1]
    from_prefix = torch.matmul(prefix_weights.view(kv_heads, rows * groups * q, length), prefix_values[0])
    out = torch.matmul(own_weights, value[:, :, None])  # (rows, kv, g, q, dv)
    out = out + from_prefix.view(kv_heads, rows, groups, q, dv).permute(1, 0, 2, 3, 4)
    return out.reshape(rows, heads, q, dv).transpose(1, 2).contiguous()


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.float()


def shared_view(cache):
    """A read-only view of a batch-1 prefix ``cache`` that any number of rows attend to in one forward, or
    ``None`` where its layers are not plain dynamic (or sliding-window) layers.

    Its ``update`` stores nothing (a next-token forward never reads the cache again): inside
    :func:`shared_prefix_attention` it stages the layer's prefix and returns the rows' own keys and values;
    elsewhere it returns the prefix broadcast to the rows, followed by their own keys and values.
    """
    layers = shareable_layers(cache)
    if layers is None:
        return None
    view = copy.copy(cache)

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        layer = layers[layer_idx]
        if stage(layer.keys, layer.values):
            return key_states, value_states
        rows = key_states.shape[0]
        return (torch.cat([layer.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
                torch.cat([layer.values.expand(rows, -1, -1, -1), value_states], dim=-2))

    view.update = update
    return view


_SHAREABLE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def shareable_layers(cache) -> list | None:
    """The layers of a batch-1 ``cache`` if every one holds plain keys and values that rows can share."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(cache, "offloading", False):
        return None
    for layer in layers:
        if type(layer).__name__ not in _SHAREABLE_LAYERS or getattr(layer, "record_past", False):
            return None
        if not getattr(layer, "is_initialized", False) or layer.keys.shape[0] != 1:
            return None
    return layers


class PrefixedLayer(DynamicLayer):
    """One layer's cache: a prefix shared by all rows (batch 1), then each row's own keys and values.

    It holds every position from the start of the prompt, as a full-attention layer does; for a sliding-window
    layer the model's sliding mask still limits what each query sees, so attention gives what a sliding cache
    would.
    """

    is_sliding = False

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> None:
        super().__init__()
        self.device = prefix_keys.device
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        # empty until the rows' first tokens come (a layer that reads ``keys`` before then sees no tokens)
        self.keys, self.values = prefix_keys[..., :0, :], prefix_values[..., :0, :]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.keys.shape[-2]:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        if stage(self.prefix_keys, self.prefix_values):
            return self.keys, self.values
        rows = self.keys.shape[0]
        return (torch.cat([self.prefix_keys.expand(rows, -1, -1, -1), self.keys], dim=-2),
                torch.cat([self.prefix_values.expand(rows, -1, -1, -1), self.values], dim=-2))

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.keys.shape[-2]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.keys.shape[-2]:
            self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys.shape[-2]:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)


def prefixed_cache(cache):
    """A cache for generation rows that share ``cache`` as their prefix and store only their own tokens,
    or ``None`` where ``cache`` is of a kind this cannot reproduce."""
    layers = shareable_layers(cache)
    if layers is None or any(layer.keys.shape[-2] != layer.get_seq_length() for layer in layers):
        return None  # a sliding-window layer has already dropped the prefix's first tokens
    out = copy.copy(cache)
    out.layers = [PrefixedLayer(layer.keys, layer.values) for layer in layers]
    return out
