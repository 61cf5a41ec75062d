"""Interventions on a target run beyond the single patch: extra writes, embedding noise, attention knockout.

- :class:`Write`: a vector written over (or added to) the output of a *site* at one position: a decoder
  block (the residual stream after block l), its MLP or its attention module, or the token embeddings
  (``layer=EMBEDDINGS``, before block 0).
- :class:`Noise`: vectors added to the token embeddings of chosen positions (causal tracing's corrupted
  run). The vectors are explicit, so a run is reproduced exactly by passing the same tensor.
- :class:`Knockout`: attention edges cut, in every head of a set of layers, from one query position to a
  set of key positions (the masked scores become ``-inf``).

The hooks here are shared by both engines; they work on batch rows and on positions relative to the
tokens a forward actually runs (``offset`` tokens come from a key/value cache).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from patchscopes.engine.hooks import block_output, with_block_output
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.models.architectures import get_module

EMBEDDINGS = -1
"""The layer index of the token embeddings (the input of block 0) in engine jobs."""

Site = Literal["block", "mlp", "attn"]
SITES: tuple[str, ...] = ("block", "mlp", "attn")
MASKABLE_ATTENTION = ("eager", "sdpa")


@dataclass(frozen=True, eq=False)
class Write:
    """One vector written into a target run.

    Attributes:
        layer: The block index, or :data:`EMBEDDINGS` for the token embeddings.
        position: The token position written.
        value: The vector ``(d,)``; ``None`` means the job's f(h).
        site: ``"block"`` (the block's output, the residual stream), ``"mlp"`` or ``"attn"`` (that
            module's output inside the block). Embedding writes use ``"block"``.
        add: Add the vector to the state instead of replacing it.
    """

    layer: int
    position: int
    value: torch.Tensor | None = None
    site: Site = "block"
    add: bool = False


@dataclass(frozen=True, eq=False)
class Noise:
    """Vectors added to the token embeddings at ``positions``, ``values`` of shape ``(len(positions), d)``."""

    positions: tuple[int, ...]
    values: torch.Tensor


@dataclass(frozen=True)
class Knockout:
    """Attention edges from ``query`` to each of ``keys`` cut in every head of ``layers``."""

    layers: tuple[int, ...]
    query: int
    keys: tuple[int, ...]


def site_module(model: LanguageModel, layer: int, site: str) -> nn.Module:
    """The module whose output a write at ``(layer, site)`` replaces."""
    if layer == EMBEDDINGS:
        return model.arch.embed
    block = model.arch.blocks[layer]
    if site == "block":
        return block
    path = {"mlp": model.arch.spec.mlp, "attn": model.arch.spec.attention}.get(site)
    if path is None:
        raise PatchscopesError(f"unknown site {site!r}", hint=f"use one of {', '.join(SITES)}")
    try:
        return get_module(block, path)
    except AttributeError as err:
        raise PatchscopesError(
            f"{model.name}: no {site} module in block {layer} ({err})",
            hint="set the mlp / attention paths of the family's ArchitectureSpec",
        ) from err


def check_knockout_support(model: LanguageModel) -> None:
    """Raise a clear error where attention edges cannot be masked (an attention kernel without masks)."""
    impl = getattr(model.hf.config, "_attn_implementation", None) or "eager"
    if impl not in MASKABLE_ATTENTION:
        raise PatchscopesError(
            f"attention knockout needs a maskable attention implementation; {model.name} uses {impl!r}",
            hint="load the model with attn_implementation='eager' or 'sdpa'",
        )


def write_hook(rows: Sequence[int], cols: Sequence[int], values: torch.Tensor, adds: Sequence[bool],
               *, offset: int = 0, once: bool = False) -> Callable:
    """A forward hook writing ``values[k]`` at ``(rows[k], cols[k] - offset)`` of a module's output.

    Positions before ``offset`` (held in a cache, not in this forward) are skipped. ``adds[k]`` adds instead
    of replacing. ``once``: only the first call (a generation's prefill).
    """
    state = {"done": False}
    keep = [k for k, c in enumerate(cols) if c >= offset]
    r = torch.tensor([rows[k] for k in keep], dtype=torch.long)
    c = torch.tensor([cols[k] - offset for k in keep], dtype=torch.long)
    v = values[keep] if keep else values[:0]
    add = torch.tensor([adds[k] for k in keep], dtype=torch.bool)

    def hook(module, args, output):
        if (once and state["done"]) or not keep:
            return output
        state["done"] = True
        hidden = block_output(output)
        vals = v.to(hidden.device, hidden.dtype)
        if add.any():
            vals = torch.where(add.to(hidden.device)[:, None], hidden[r, c] + vals, vals)
        hidden = hidden.clone()
        hidden[r.to(hidden.device), c.to(hidden.device)] = vals
        return with_block_output(output, hidden)

    return hook


def knockout_pre_hook(rows: Sequence[int] | None, query: int, keys: Sequence[int], *, offset: int = 0,
                      once: bool = False) -> Callable:
    """A forward pre-hook on an attention module masking the edges ``query -> keys`` of batch ``rows``
    (``None``: every row).

    ``query`` and ``keys`` are absolute positions; the forward runs the queries from ``offset`` on (earlier
    tokens come from the cache). Works on the float (eager) and boolean (SDPA) masks Hugging Face passes,
    and builds the causal mask where none was passed.
    """
    state = {"done": False}

    def hook(module, args, kwargs):
        if once and state["done"]:
            return None
        state["done"] = True
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q_len = hidden.shape[1]
        q = query - offset
        if not 0 <= q < q_len:
            return None
        mask = kwargs.get("attention_mask")
        if mask is None:
            k_len = q_len + offset
            mask = torch.ones(hidden.shape[0], 1, q_len, k_len, dtype=torch.bool, device=hidden.device)
            mask = torch.tril(mask, diagonal=offset)
        elif mask.ndim != 4:
            raise PatchscopesError(f"cannot cut attention edges through a mask of shape {tuple(mask.shape)}")
        else:
            mask = mask.clone()
        if mask.shape[0] == 1 and hidden.shape[0] > 1:
            mask = mask.expand(hidden.shape[0], -1, -1, -1).clone()
        blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        # A sliding-window cache keeps only the last keys: the mask's columns end at the current token.
        first_column = offset + q_len - mask.shape[-1]
        columns = [k - first_column for k in keys if k >= first_column]
        if not columns:
            return None
        row_index = torch.arange(mask.shape[0], device=mask.device) if rows is None else \
            torch.tensor(list(rows), dtype=torch.long, device=mask.device)
        key_index = torch.tensor(columns, dtype=torch.long, device=mask.device)
        mask[row_index[:, None], :, q, key_index[None, :]] = blocked
        kwargs["attention_mask"] = mask
        return args, kwargs

    return hook


@contextlib.contextmanager
def registered(model: LanguageModel, plan: dict[tuple[int, str], list[Callable]],
               pre: dict[int, list[Callable]] | None = None) -> Iterator[None]:
    """Within the block, forward hooks ``plan[(layer, site)]`` and attention pre-hooks ``pre[layer]`` are on."""
    handles = []
    try:
        for (layer, site), hooks in plan.items():
            module = site_module(model, layer, site)
            handles += [module.register_forward_hook(h) for h in hooks]
        for layer, hooks in (pre or {}).items():
            module = site_module(model, layer, "attn")
            handles += [module.register_forward_pre_hook(h, with_kwargs=True) for h in hooks]
        yield
    finally:
        for handle in handles:
            handle.remove()


def one_row_hooks(model: LanguageModel, writes: Sequence[Write], noise: Noise | None, knockout: Knockout | None,
                  *, once: bool = False, knockout_rows: Sequence[int] | None = (0,),
                  ) -> tuple[dict[tuple[int, str], list[Callable]], dict[int, list[Callable]]]:
    """The hooks of a one-row target run, for :func:`registered`: one write hook per write, in order (the noise
    first, then ``writes``), and the knockout's attention pre-hooks (its support checked first).

    Args:
        model: The target model.
        writes: The writes after the noise (the patch first, where there is one).
        noise: Embedding noise, or ``None``.
        knockout: Attention edges to cut, or ``None``.
        once: Hooks act on the first forward only (generation: the prompt's prefill).
        knockout_rows: The rows the knockout applies to (``None``: every row).
    """
    plan: dict[tuple[int, str], list[Callable]] = defaultdict(list)
    for w in (noise_write(noise) if noise is not None else []) + list(writes):
        plan[(w.layer, w.site)].append(write_hook([0], [w.position], w.value[None], [w.add], once=once))
    pre: dict[int, list[Callable]] = {}
    if knockout is not None:
        check_knockout_support(model)
        rows = None if knockout_rows is None else list(knockout_rows)
        pre = {layer: [knockout_pre_hook(rows, knockout.query, knockout.keys, once=once)] for layer in knockout.layers}
    return plan, pre


def noise_write(noise: Noise) -> list[Write]:
    """The noise as additive writes on the embeddings."""
    return [Write(EMBEDDINGS, p, noise.values[k], add=True) for k, p in enumerate(noise.positions)]
