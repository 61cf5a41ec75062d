"""Reading hidden states: the one public way for code outside the engine to get the output of decoder blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import torch

from patchscopes.engine.hooks import StopForward, capture_plan, installed, row_plan
from patchscopes.engine.interventions import Write
from patchscopes.engine.padding import left_pad
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel


def capture_states(
    model: LanguageModel,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    site: str = "block",
    writes: Sequence[Sequence[Write]] | None = None,
) -> torch.Tensor:
    """The output of decoder blocks at given positions of a batch of token sequences, from one forward.

    The sequences run left-padded in one batch; the forward stops after the highest layer asked for. Layer
    ``l`` is the output of block ``l`` (Hugging Face ``hidden_states[l + 1]``, before the final norm).

    Args:
        model: The model.
        sequences: Token ids of each prompt, as the model reads them (special tokens included).
        positions: For each sequence, the positions to read (indices into that sequence).
        layers: The layers to read, in the order wanted (default: every layer).
        site: ``"block"`` (the block's output), or the output of its ``"mlp"`` or ``"attn"`` module.
        writes: For each sequence, the writes (:class:`Write`, values given) its forward carries out, as engines do.

    Returns:
        ``(n, len(layers), d)`` in float32 on the CPU, one row per (sequence, position) pair, in order.

    Raises:
        PatchscopesError: The lengths differ, a sequence is empty, or a position or layer is out of range.
    """
    if len(sequences) != len(positions):
        raise PatchscopesError(f"{len(sequences)} sequences but {len(positions)} lists of positions")
    layers = list(range(model.num_layers)) if layers is None else [model.check_layer(x) for x in layers]
    if not layers:
        raise PatchscopesError("no layers to read", hint="give at least one layer")
    for seq, pos in zip(sequences, positions):
        if not seq:
            raise PatchscopesError("an empty sequence has no states to read", hint="give at least one token")
        bad = [p for p in pos if not 0 <= p < len(seq)]
        if bad:
            raise PatchscopesError(f"position {bad[0]} is outside a sequence of {len(seq)} tokens")
    if writes is not None and len(writes) != len(sequences):
        raise PatchscopesError(f"{len(sequences)} sequences but {len(writes)} lists of writes")
    if len(sequences) > 1 and not model.fast_path.left_padding:  # padded rows would not be exact: one at a time
        return torch.cat([capture_states(model, [s], [p], layers, site, None if writes is None else [writes[k]])
                          for k, (s, p) in enumerate(zip(sequences, positions))])
    d = model.hidden_size
    if not any(len(p) for p in positions):
        return torch.zeros(0, len(layers), d)
    ids, mask, pos_ids, pads = left_pad(model, sequences)
    rows = torch.tensor([r for r, ps in enumerate(positions) for _ in ps])
    cols = torch.tensor([pads[r] + p for r, ps in enumerate(positions) for p in ps])
    store: dict = {}
    plan = capture_plan(model, {(layer, site): (rows, cols) for layer in set(layers)}, store)
    written = None if writes is None else row_plan(
        model, [[replace(w, position=pads[r] + w.position) for w in ws] for r, ws in enumerate(writes)])
    with torch.no_grad(), installed(model, written, plan), contextlib.suppress(StopForward):
        model.forward(ids, attention_mask=mask, position_ids=pos_ids, logits_to_keep=1)
    return torch.stack([store[(layer, site)].float().cpu() for layer in layers], dim=1)
