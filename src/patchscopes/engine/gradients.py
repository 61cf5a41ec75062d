"""Differentiable patched runs: the Jacobian of a later state with respect to a patched one, and target runs
on input embeddings (soft prompts) with a patch, whose logits keep their gradient.

These are what fitted methods need beyond the no-grad engines: the linear relational embedding (LRE) takes
the Jacobian of the last layer's state with respect to the subject's state; the future lens trains a soft
prompt through a patched forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine.hooks import HookPlan, StopForward, capture_hook, installed, write_hook
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel


@dataclass
class StateJacobian:
    """First-order approximations z ≈ J_l h_l + (z − J_l h_l) of the maps from hidden states at one position
    (one per source layer l) to a later hidden state z.

    Attributes:
        layers: The source layers l.
        jacobians: ``(len(layers), d, d)``: ∂z/∂h_l at the model's own states (the total derivative, through
            every later layer).
        h: ``(len(layers), d)``: the hidden states h_l.
        z: ``(d,)``: the hidden state at ``(target_layer, target_position)``.
        logits: ``(vocab,)``: the model's own next-token logits at the last position.
    """

    layers: list[int]
    jacobians: torch.Tensor
    h: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor


@contextlib.contextmanager
def eager_attention(model: LanguageModel):
    """Run ``model`` with the plain (eager) attention for the duration: its backward has vmap rules, where
    the fused kernels fall back to a slow loop."""
    config = model.hf.config
    before = getattr(config, "_attn_implementation", None)
    setter = getattr(model.hf, "set_attn_implementation", None)
    if before in (None, "eager") or setter is None:
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


def _plan(hooks: dict[int, list]) -> HookPlan:
    plan = HookPlan()
    for layer, fns in hooks.items():
        plan.forward[(layer, "block")] += fns
    return plan


def state_jacobians(
    model: LanguageModel,
    ids: Sequence[int],
    source_layers: Sequence[int],
    source_position: int,
    target_layer: int = -1,
    target_position: int = -1,
    *,
    chunk_size: int | None = None,
) -> StateJacobian:
    """∂z/∂h_l for each source layer l, where h_l is block l's output at ``source_position`` and z block
    ``target_layer``'s output at ``target_position``, on the token sequence ``ids``.

    Reverse-mode autodiff: a zero shift δ_l is added to each h_l, and one forward is followed by the
    vector-Jacobian products of the d basis vectors (vmapped, in chunks of ``chunk_size``); ∂z/∂δ_l is the
    total derivative of z with respect to h_l. Positions before the source run once, without gradients, into
    a key/value cache, and the attention runs in its plain (eager) form, whose backward vmap batches.

    Raises:
        PatchscopesError: A layer or position is out of range, or the target state comes before a source.
    """
    n = len(ids)
    layers = [model.check_layer(layer, "source layer") for layer in source_layers]
    tgt = model.check_layer(target_layer, "target layer")
    if not layers:
        raise PatchscopesError("no source layer given")
    positions = []
    for position, what in ((source_position, "source position"), (target_position, "target position")):
        if not -n <= position < n:
            raise PatchscopesError(f"{what} {position} is out of range for {n} tokens")
        positions.append(position % n)
    src_pos, tgt_pos = positions
    if tgt < max(layers) or tgt_pos < src_pos:
        raise PatchscopesError("the target state must come at or after the source states (layer and position)")
    # Positions before the source do not depend on h: run them once, without gradients, into a cache, so
    # the forward and the d backward passes cover only the positions from the source on.
    cache = None
    if src_pos > 0:
        prefix = torch.tensor([list(ids[:src_pos])])
        with torch.no_grad():
            _, cache = model.forward(prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    suffix = torch.tensor([list(ids[src_pos:])])
    mask = torch.ones(1, n, dtype=torch.long)
    pos_ids = torch.arange(src_pos, n)[None]
    rel_tgt = tgt_pos - src_pos

    def forward(hooks: dict[int, list]):
        with installed(model, _plan(hooks)), contextlib.suppress(StopForward):
            logits, _ = model.forward(suffix, attention_mask=mask, position_ids=pos_ids,
                                      cache=copy.deepcopy(cache), use_cache=cache is not None)
            return logits
        return None  # stopped early

    store: dict = {}
    zero = torch.tensor([0])  # one row, read at its first token (the source position)
    with torch.no_grad():
        logits = forward({layer: [capture_hook(zero, zero, store, layer, False, detach=False)] for layer in layers})
    h = torch.stack([store[layer][0].detach() for layer in layers])

    def z_of(deltas: torch.Tensor) -> torch.Tensor:
        out: dict = {}
        # the shift is added without writing in place into the model's tensors, so vmap batches the backward
        hooks = {layer: [write_hook([0], [0], deltas[k][None], [True])] for k, layer in enumerate(layers)}
        hooks.setdefault(tgt, []).append(capture_hook(zero, torch.tensor([rel_tgt]), out, "z", True, detach=False))
        forward(hooks)
        return out["z"][0]

    params = list(model.hf.parameters())
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad(), eager_attention(model):
            z, vjp = torch.func.vjp(z_of, torch.zeros_like(h))
            basis = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
            (jac,) = torch.vmap(vjp, chunk_size=chunk_size)(basis)  # (d_z, k, d_h)
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
    return StateJacobian(layers, jac.detach().float().permute(1, 0, 2).contiguous().cpu(), h.float().cpu(),
                         z.detach().float().cpu(), logits[0, -1].detach().float().cpu())


def embed_tokens(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """What the model's token embedding gives for ``ids`` (the input a soft prompt stands beside)."""
    return model.arch.embed(ids.to(model.device))


def soft_prompt_logits(
    model: LanguageModel,
    prompt: torch.Tensor,
    continuation: torch.Tensor,
    layer: int,
    values: torch.Tensor | None,
) -> torch.Tensor:
    """Next-token logits of runs whose input is a soft prompt followed by tokens, with a patch at the prompt's
    last position; differentiable with respect to ``prompt`` (and ``values``).

    Args:
        model: The model.
        prompt: ``(k, d)`` input vectors (in the space of the token embedding's output).
        continuation: ``(b, m)`` token ids read after the prompt (teacher forcing), ``m`` may be 0.
        layer: The block whose output is overwritten at position ``k - 1``.
        values: ``(b, d)`` vectors written there (``None``: no patch).

    Returns:
        ``(b, m + 1, vocab)`` float32 logits at positions ``k - 1 ... k - 1 + m``.
    """
    k = prompt.shape[0]
    b = continuation.shape[0] if values is None else values.shape[0]
    parts = [prompt.to(model.device, model.dtype)[None].expand(b, k, -1)]
    if continuation.shape[1]:
        parts.append(embed_tokens(model, continuation))
    embeds = torch.cat(parts, dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    hooks = {}
    if values is not None:
        hooks[model.check_layer(layer)] = [write_hook(list(range(b)), [k - 1] * b, values, [False] * b)]
    with installed(model, _plan(hooks)):
        logits, _ = model.forward(None, inputs_embeds=embeds, attention_mask=mask)
    return logits[:, k - 1:].float()
