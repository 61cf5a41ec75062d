"""The shared prefix: the tokens before a group's first change, whose key/value cache its rows share.

No write of a group's rows changes the tokens before their start, so those tokens' keys and values are computed
once (:func:`prefix_cache`, or cut from the base run's cache: :func:`cut_cache`) and shared by every row:

- :func:`~patchscopes.models.shared_attention.shared_view` serves a single forward (a next-token readout);
  :func:`~patchscopes.models.shared_attention.prefixed_cache` serves generation, each row storing only its own
  keys and values after the prefix;
- inside :func:`sharing`, on a model whose load-time proof passed it, attention reads the prefix once for all rows
  (:mod:`patchscopes.models.shared_attention`); elsewhere each layer concatenates the prefix to the rows' keys;
- :func:`per_row_prefix` serves rows of several base runs (causal tracing's noise samples), each attending to its
  own base's prefix.

For caches these cannot reproduce (static, quantized, offloaded, linear attention) they return ``None`` and the
caller falls back to :func:`expand_cache`, one copy per row.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch

from patchscopes.engine.hooks import HookPlan, installed
from patchscopes.models import LanguageModel
from patchscopes.models.shared_attention import shareable_layers, shared_prefix_attention


def sharing(model: LanguageModel):
    """Shared-prefix attention for ``model``'s forwards within the block, where its proof allows it."""
    return shared_prefix_attention(model) if model.fast_path.shared_attention else contextlib.nullcontext()


def prefix_cache(model: LanguageModel, prefix: Sequence[int], plan: HookPlan | None = None):
    """The key/value cache of the tokens ``prefix`` with the hooks of ``plan`` (``None`` if there are none)."""
    if not prefix:
        return None
    ids = torch.tensor([list(prefix)])
    with torch.no_grad(), installed(model, plan):
        _, cache = model.forward(ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(prefix))[None],
                                 use_cache=True, logits_to_keep=1)
    return cache


def expand_cache(cache, rows: int):
    """A copy of ``cache`` for each of ``rows`` rows (the fallback when the prefix cannot be shared)."""
    if cache is None:
        return None
    cache = copy.deepcopy(cache)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def cut_cache(cache, length: int, n: int):
    """The first ``length`` tokens of a batch-1 ``cache`` of ``n`` tokens, or ``None`` where a layer does not hold
    them all (a sliding window has dropped some)."""
    layers = shareable_layers(cache)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" or layer.keys.shape[-2] != n for layer in layers):
        return None
    out = copy.copy(cache)
    out.layers = []
    for layer in layers:
        cut = copy.copy(layer)
        cut.keys, cut.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        out.layers.append(cut)
    return out


def per_row_prefix(caches: Sequence, row_base: torch.Tensor):
    """A cache view for a forward whose row ``r`` attends to the prefix ``caches[row_base[r]]`` (batch-1 caches
    of one length); it stores nothing. The rows that call it are always the first ones of the batch."""
    n_layers = len(caches[0].layers)
    keys = [torch.cat([c.layers[i].keys for c in caches]) for i in range(n_layers)]
    values = [torch.cat([c.layers[i].values for c in caches]) for i in range(n_layers)]
    view = copy.copy(caches[0])

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        index = row_base[: key_states.shape[0]].to(key_states.device)
        return (torch.cat([keys[layer_idx].index_select(0, index), key_states], dim=-2),
                torch.cat([values[layer_idx].index_select(0, index), value_states], dim=-2))

    view.update = update
    return view
