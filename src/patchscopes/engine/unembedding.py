"""Top-k next-token readings from final hidden states, one slice of the vocabulary at a time.

A next-token readout keeps only the top-k tokens and their probabilities, so the engine need not hold a
``(rows, vocab)`` logit matrix: the unembedding is applied to :data:`VOCAB_CHUNK` vocabulary rows at a
time, and a running maximum, a running sum of exponentials (an online log-sum-exp) and a running top-k are
kept. Each slice's logits fit in cache, which makes the unembedding and the softmax faster than on the
whole matrix, and memory no longer grows with the vocabulary (262k tokens for Gemma 3).

The probabilities equal a softmax over the full logits up to float rounding (the tests hold them within
1e-4 of the reference engine's, which takes ``log_softmax`` of the model's own logits).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from patchscopes.engine.hooks import StopForward
from patchscopes.models import LanguageModel

VOCAB_CHUNK = 2048


@contextlib.contextmanager
def unembedding_input(model: LanguageModel, store: dict) -> Iterator[None]:
    """Within the block, a forward stops at the unembedding, leaving its input in ``store["hidden"]``.

    The input is the final-normed hidden state of the positions the model was asked to keep
    (``logits_to_keep``), ``(rows, kept, d)``. Wrap the forward in ``contextlib.suppress(StopForward)``.
    """

    def hook(module, args):
        store["hidden"] = args[0]
        raise StopForward

    handle = model.arch.unembed.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def logits_of(model: LanguageModel, hidden: torch.Tensor) -> torch.Tensor:
    """Full logits of final-normed hidden states: the unembedding and any soft-capping."""
    return model.arch.transform_logits(model.arch.unembed(hidden))


def top_k_logprobs(model: LanguageModel, hidden: torch.Tensor, k: int,
                   chunk: int = VOCAB_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and ids of the ``k`` most likely next tokens, most likely first, ``(rows, k)`` each.

    Args:
        model: The model whose unembedding (and soft-capping) reads ``hidden``.
        hidden: Final-normed hidden states, ``(rows, d)``.
        k: How many tokens to keep.
        chunk: Vocabulary rows unembedded at a time.
    """
    unembed = model.arch.unembed
    if type(unembed) is not nn.Linear or unembed.weight.device.type == "meta":
        # An unembedding of another kind, or one whose weights are offloaded, is applied whole.
        logprobs = torch.log_softmax(logits_of(model, hidden).float(), dim=-1)
        return logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    weight, bias = unembed.weight, unembed.bias
    hidden = hidden.to(weight.device)
    rows, vocab = hidden.shape[0], weight.shape[0]
    k = min(k, vocab)
    running_max = torch.full((rows, 1), float("-inf"), device=hidden.device)
    running_sum = torch.zeros((rows, 1), device=hidden.device)
    best_values = best_ids = None
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        logits = nn.functional.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])
        logits = model.arch.transform_logits(logits).float()  # in the model's dtype, as the model does it
        if k == 1:
            values, ids = logits.max(dim=-1, keepdim=True)
        else:
            values, ids = logits.topk(min(k, stop - start), dim=-1)
        new_max = torch.maximum(running_max, values[:, :1])
        running_sum = running_sum * torch.exp(running_max - new_max) + logits.sub_(new_max).exp_().sum(-1, True)
        running_max = new_max
        ids = ids + start
        if best_values is None:
            best_values, best_ids = values, ids
        else:
            both = torch.cat([best_values, values], dim=-1)
            best_values, order = both.topk(min(k, both.shape[-1]), dim=-1)
            best_ids = torch.cat([best_ids, ids], dim=-1).gather(-1, order)
    return best_values - (running_max + running_sum.log()), best_ids
