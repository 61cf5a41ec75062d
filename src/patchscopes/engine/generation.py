"""Plain, unpatched greedy generation for many prompts at once.

The experiments need the model's own answer to a prompt (does it know that the capital of France is Paris?)
for hundreds of prompts. :func:`greedy_generate` runs them left-padded in batches, with the attention mask
and position ids every row needs, so each row's text is the one it would get alone; the tokens come from the one
decode loop (:mod:`~patchscopes.engine.decode`).

    >>> texts = greedy_generate(model, ["The capital city of France", "The capital city of Peru"], 20)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from patchscopes.engine.decode import decode
from patchscopes.engine.padding import left_pad
from patchscopes.engine.readouts import Generate
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel


def greedy_generate(
    model: LanguageModel,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 20,
    *,
    batch_size: int = 32,
    progress=None,
) -> list[str]:
    """Greedy continuations of ``prompts``, without any patch.

    Prompts are sorted by length and run left-padded in batches of ``batch_size``; a row's text ends at its
    first end-of-sequence token (the tokens after it are dropped).

    Args:
        model: The model.
        prompts: Texts (tokenized with the model's special tokens) or sequences of token ids used as given.
        max_new_tokens: The most tokens generated per prompt.
        batch_size: Prompts per forward pass.
        progress: An optional tqdm-like bar, advanced by the number of prompts of each finished batch.

    Returns:
        The generated text of each prompt (without the prompt), in the order of ``prompts``.

    Raises:
        PatchscopesError: An empty prompt, or ``max_new_tokens`` / ``batch_size`` below 1.
    """
    ids = greedy_token_ids(model, prompts, max_new_tokens, batch_size=batch_size, progress=progress)
    return [model.decode(row) for row in ids]


def greedy_token_ids(
    model: LanguageModel,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 20,
    *,
    batch_size: int = 32,
    progress=None,
) -> list[list[int]]:
    """The token ids of :func:`greedy_generate`'s continuations, each ending before its first end-of-sequence."""
    if max_new_tokens < 1:
        raise PatchscopesError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise PatchscopesError(f"batch_size must be at least 1, got {batch_size}")
    encoded: list[list[int]] = []
    for prompt in prompts:
        ids = model.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise PatchscopesError(f"cannot generate from the empty prompt {prompt!r}")
        encoded.append(ids)
    if not model.fast_path.left_padding:  # padded rows would not be exact: one prompt at a time
        batch_size = 1
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[list[int]] = [[] for _ in encoded]
    for first in range(0, len(order), batch_size):
        rows = order[first: first + batch_size]
        for row, ids in zip(rows, _generate_batch(model, [encoded[r] for r in rows], max_new_tokens)):
            out[row] = ids
        if progress is not None:
            progress.update(len(rows))
    return out


def _generate_batch(model: LanguageModel, sequences: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    ids, mask, positions, _ = left_pad(model, sequences)
    readout = Generate(max_new_tokens=max_new_tokens)
    with torch.no_grad():
        logits, cache = model.forward(ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                      logits_to_keep=1)
        rows = decode(model, logits[:, -1], cache, mask, readout,
                      positions=torch.tensor([len(s) for s in sequences]))
    eos = model.eos_token_ids
    return [row[: next((k for k, t in enumerate(row) if t in eos), len(row))] for row in rows]
