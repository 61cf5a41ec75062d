"""The one hook mechanism of both engines: read a site's output, write over it, cut attention edges, stop a forward.

These are the only places where the engine touches a model's internals. A forward's hooks are described by a
:class:`HookPlan` (forward hooks per ``(layer, site)``, attention pre-hooks per layer) and installed for the
duration of a block by :func:`installed`. :func:`row_plan` builds the plan of a batch from each row's writes and
knockout; the reference engine uses it with one row, the batched engine with many. Hooks work on batch rows and
on positions relative to the tokens a forward actually runs (``offset`` tokens come from a key/value cache).
A block's output is its first return value (a tensor, or the first item of a tuple in older transformers).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from patchscopes.engine.interventions import Knockout, Write, check_knockout_support, site_module
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed has been read."""


def block_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a block's output."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def with_block_output(output: object, hidden: torch.Tensor) -> object:
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def capture_hook(rows: torch.Tensor, cols: torch.Tensor, store: dict, key: object, stop: bool,
                 detach: bool = True) -> Callable:
    """A hook saving ``output[rows, cols]`` in ``store[key]`` (a copy unless ``detach=False``); it may stop the run."""

    def hook(module, args, output):
        hidden = block_output(output)
        value = hidden[rows.to(hidden.device), cols.to(hidden.device)]
        store[key] = value.detach().clone() if detach else value
        if stop:
            raise StopForward
        return output

    return hook


def write_hook(rows: Sequence[int], cols: Sequence[int], values: torch.Tensor, adds: Sequence[bool],
               *, offset: int = 0) -> Callable:
    """A forward hook writing ``values[k]`` at ``(rows[k], cols[k] - offset)`` of a module's output (positions
    before ``offset``, held in a cache, are skipped); ``adds[k]`` adds instead of replacing."""
    keep = [k for k, c in enumerate(cols) if c >= offset]
    r = torch.tensor([rows[k] for k in keep], dtype=torch.long)
    c = torch.tensor([cols[k] - offset for k in keep], dtype=torch.long)
    v = values[keep] if keep else values[:0]
    add = torch.tensor([adds[k] for k in keep], dtype=torch.bool)

    def hook(module, args, output):
        if not keep:
            return output
        hidden = block_output(output)
        vals = v.to(hidden.device, hidden.dtype)
        if add.any():
            vals = torch.where(add.to(hidden.device)[:, None], hidden[r, c] + vals, vals)
        hidden = hidden.clone()
        hidden[r.to(hidden.device), c.to(hidden.device)] = vals
        return with_block_output(output, hidden)

    return hook


def knockout_pre_hook(rows: Sequence[int] | None, query: int, keys: Sequence[int], *, offset: int = 0) -> Callable:
    """A forward pre-hook on an attention module masking the edges ``query -> keys`` of batch ``rows``
    (``None``: every row; rows past the forward's batch are not running it).

    ``query`` and ``keys`` are absolute positions; the forward runs the queries from ``offset`` on (earlier
    tokens come from the cache). Works on the float (eager) and boolean (SDPA) masks Hugging Face passes,
    and builds the causal mask where none was passed.
    """

    def hook(module, args, kwargs):
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
        chosen = range(mask.shape[0]) if rows is None else [r for r in rows if r < mask.shape[0]]
        if not columns or not chosen:
            return None
        row_index = torch.tensor(list(chosen), dtype=torch.long, device=mask.device)
        key_index = torch.tensor(columns, dtype=torch.long, device=mask.device)
        mask[row_index[:, None], :, q, key_index[None, :]] = blocked
        kwargs["attention_mask"] = mask
        return args, kwargs

    return hook


@dataclass
class HookPlan:
    """The hooks of one forward: forward hooks per ``(layer, site)`` and attention pre-hooks per layer."""

    forward: dict[tuple[int, str], list[Callable]] = field(default_factory=lambda: defaultdict(list))
    pre: dict[int, list[Callable]] = field(default_factory=lambda: defaultdict(list))


def row_plan(model: LanguageModel, rows: Sequence[Sequence[Write]], knockouts: Sequence[Knockout | None] = (),
             *, offset: int = 0, every_row: bool = False) -> HookPlan:
    """The hooks carrying out each row's writes (``rows[r]``, values filled, in order) and knockout
    (``knockouts[r]``) in a forward over the tokens from ``offset`` on.

    Writes at one site are gathered into one hook per place in the rows' order, so each row sees its writes
    applied in its own order. ``every_row``: the knockouts apply to every row of the forward (rows that share
    a base run share its knockout).
    """
    plan = HookPlan()
    layered: dict[tuple[int, str, int], list[tuple[int, int, torch.Tensor, bool]]] = defaultdict(list)
    for row, writes in enumerate(rows):
        for order, w in enumerate(writes):
            layered[(w.layer, w.site, order)].append((row, w.position, w.value, w.add))
    for (layer, site, _), entries in sorted(layered.items(), key=lambda kv: kv[0][2]):
        values = torch.stack([e[2].detach() for e in entries])
        plan.forward[(layer, site)].append(
            write_hook([e[0] for e in entries], [e[1] for e in entries], values, [e[3] for e in entries],
                       offset=offset))
    cut: dict[tuple[int, int, tuple[int, ...]], list[int]] = defaultdict(list)
    for row, knockout in enumerate(knockouts):
        if knockout is not None:
            check_knockout_support(model)
            for layer in knockout.layers:
                cut[(layer, knockout.query, knockout.keys)].append(row)
    for (layer, query, keys), which in cut.items():
        plan.pre[layer].append(knockout_pre_hook(None if every_row else which, query, keys, offset=offset))
    return plan


def capture_plan(model: LanguageModel, wanted: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]],
                 store: dict, *, stop: bool = True) -> HookPlan:
    """Hooks saving ``output[rows, cols]`` of each ``(layer, site)`` of ``wanted`` under ``store[(layer, site)]``;
    with ``stop``, the forward ends after the highest block output read (an MLP or attention site stops
    nothing)."""
    plan = HookPlan()
    top = max(wanted) if wanted else None
    for key, (rows, cols) in wanted.items():
        plan.forward[key].append(capture_hook(rows, cols, store, key, stop=stop and key == top and key[1] == "block"))
    return plan


@contextlib.contextmanager
def installed(model: LanguageModel, *plans: HookPlan | None) -> Iterator[None]:
    """Within the block, the hooks of ``plans`` are on, in order."""
    handles = []
    try:
        for plan in plans:
            if plan is None:
                continue
            for (layer, site), hooks in plan.forward.items():
                module = site_module(model, layer, site)
                handles += [module.register_forward_hook(h) for h in hooks]
            for layer, hooks in plan.pre.items():
                module = site_module(model, layer, "attn")
                handles += [module.register_forward_pre_hook(h, with_kwargs=True) for h in hooks]
        yield
    finally:
        for handle in handles:
            handle.remove()
