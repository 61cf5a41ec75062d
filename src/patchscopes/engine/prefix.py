"""The target prefix: the tokens before i*, whose key/value cache every row of a target group shares.

No patch can change the target tokens before i*, so their keys and values are computed once per target
prompt (:func:`prefix_cache`) and shared by every row instead of copied into each:

- :func:`shared_prefix_view` serves a single forward (a next-token readout): its ``update`` returns the
  prefix, broadcast to however many rows call it, followed by the rows' new keys and values, and stores
  nothing, since a next-token readout never reads the cache again.
- :func:`prefixed_cache` serves generation: each row stores only its own keys and values after the prefix.

Both reproduce what a per-row copy of the cache would return (the same tensors, in the same order), for the
cache layers they accept; for any other cache (static, quantized, offloaded, linear attention) they return
``None`` and the caller falls back to :func:`expand_cache`, one copy per row.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicLayer

from patchscopes.models import LanguageModel

_SHAREABLE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def prefix_cache(model: LanguageModel, prefix: Sequence[int]):
    """The key/value cache of the unpatched target tokens before i* (``None`` if there are none)."""
    if not prefix:
        return None
    ids = torch.tensor([list(prefix)])
    with torch.no_grad():
        _, cache = model.forward(
            ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(prefix))[None],
            use_cache=True, logits_to_keep=1,
        )
    return cache


def expand_cache(cache, rows: int):
    """A copy of ``cache`` for each of ``rows`` rows (the fallback when the prefix cannot be shared)."""
    if cache is None:
        return None
    cache = copy.deepcopy(cache)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def _shareable_layers(cache) -> list | None:
    layers = getattr(cache, "layers", None)
    if not layers or getattr(cache, "offloading", False):
        return None
    for layer in layers:
        if type(layer).__name__ not in _SHAREABLE_LAYERS or getattr(layer, "record_past", False):
            return None
        if not getattr(layer, "is_initialized", False) or layer.keys.shape[0] != 1:
            return None
    return layers


def shared_prefix_view(cache):
    """A read-only view of a batch-1 prefix cache that any number of rows can attend to, or ``None``."""
    layers = _shareable_layers(cache)
    if layers is None:
        return None
    view = copy.copy(cache)

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        layer = layers[layer_idx]
        rows = key_states.shape[0]
        keys = layer.keys.expand(rows, -1, -1, -1)
        values = layer.values.expand(rows, -1, -1, -1)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    view.update = update
    return view


class PrefixedLayer(DynamicLayer):
    """One layer's cache: a prefix shared by all rows (batch 1), then each row's own keys and values.

    It holds every position from the start of the prompt, as a full-attention layer does; for a
    sliding-window layer the model's sliding mask still limits what each query sees, so attention gives
    what a sliding cache would.
    """

    is_sliding = False

    def __init__(self, prefix_keys: torch.Tensor, prefix_values: torch.Tensor) -> None:
        super().__init__()
        self.device = prefix_keys.device
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
        self.keys = self.values = None
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if self.keys is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        rows = self.keys.shape[0]
        return (torch.cat([self.prefix_keys.expand(rows, -1, -1, -1), self.keys], dim=-2),
                torch.cat([self.prefix_values.expand(rows, -1, -1, -1), self.values], dim=-2))

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + (0 if self.keys is None else self.keys.shape[-2])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys is not None:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)


def prefixed_cache(cache):
    """A cache for generation rows that share ``cache`` as their prefix and store only their own tokens,
    or ``None`` where ``cache`` is of a kind this cannot reproduce."""
    layers = _shareable_layers(cache)
    if layers is None or any(layer.keys.shape[-2] != layer.get_seq_length() for layer in layers):
        return None  # a sliding-window layer has already dropped the prefix's first tokens
    out = copy.copy(cache)
    out.layers = [PrefixedLayer(layer.keys, layer.values) for layer in layers]
    return out
