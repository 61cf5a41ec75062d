"""Left padding: a batch of token sequences of different lengths as one tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from patchscopes.models import LanguageModel


def left_pad(model: LanguageModel, sequences: Sequence[Sequence[int]]):
    """Left-padded ids, attention mask, position ids and the pad length of each row."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    pads = []
    for row, seq in enumerate(sequences):
        pad = width - len(seq)
        ids[row, pad:] = torch.tensor(seq)
        mask[row, pad:] = 1
        pads.append(pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, pads
