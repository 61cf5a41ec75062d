"""The one decode loop: every generation of both engines, and plain greedy generation, continues here.

A caller runs the prompt's forward (its prefill, with whatever hooks it needs) and hands the logits of its last
position and its key/value cache to :func:`decode`, which picks each row's next token (greedy, or sampled under
temperature, top-k and top-p from one generator per row), feeds it back, and drops rows from the batch as they
end: at an end-of-sequence token or when their text completes a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from patchscopes.engine.readouts import Generate
from patchscopes.models import LanguageModel


def generators(model: LanguageModel, readout: Generate, indices: Sequence[int]) -> list[torch.Generator] | None:
    """One random generator per row when sampling (seeded with the readout's seed plus the job's index)."""
    if not readout.do_sample:
        return None
    return [torch.Generator(device=model.device).manual_seed(readout.seed + int(i)) for i in indices]


def select_tokens(logits: torch.Tensor, readout: Generate, gens: list[torch.Generator] | None) -> torch.Tensor:
    """The next token of each row: argmax, or a sample under temperature, top-k and top-p."""
    if not readout.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(readout.temperature, 1e-6)
    if readout.sample_top_k:
        kth = logits.topk(min(readout.sample_top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if readout.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > readout.top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    assert gens is not None
    return torch.cat([torch.multinomial(probs[r], 1, generator=gens[r]) for r in range(len(gens))])


def stop_filter(model: LanguageModel, stop: Sequence[str]):
    """Whether a new token may complete a stop string, so that the row's text must be decoded to know.

    A stop string newly found ends inside the new token's text, so the token's own text (decoded once per id)
    holds the stop string's last character, or an incomplete character (U+FFFD) that later bytes complete. A
    space may come from the decoder rather than the token (SentencePiece's ▁), so a stop string ending in a space
    checks every token. Decoding every row at every step costs more than the forward on a GPU.
    """
    if not stop:
        return lambda token: False
    if any(not s or s[-1] == " " for s in stop):
        return lambda token: True
    last = {s[-1] for s in stop}
    cached: dict[int, bool] = {}

    def may_stop(token: int) -> bool:
        if token not in cached:
            piece = model.token_strings([token])[0]
            cached[token] = "\ufffd" in piece or any(c in piece for c in last)
        return cached[token]

    return may_stop


def decode(model: LanguageModel, first_logits: torch.Tensor, cache, mask: torch.Tensor, readout: Generate,
           gens: list[torch.Generator] | None = None, *, positions: torch.Tensor | None = None) -> list[list[int]]:
    """Decode every row from its prefill logits; rows leave the batch when they end.

    Args:
        model: The model.
        first_logits: ``(rows, vocab)`` logits after the prompt.
        cache: The key/value cache of the prompt for all rows.
        mask: The prompt's attention mask ``(rows, length)`` (zeros at left padding).
        readout: Decoding settings.
        gens: One random generator per row when sampling.
        positions: The position id of each row's first new token (default: the prompt's length).

    Returns:
        Each row's new token ids, up to and including the one that ended it.
    """
    rows, length = mask.shape
    positions = torch.full((rows,), length, dtype=torch.long) if positions is None else positions.cpu()
    tokens: list[list[int]] = [[] for _ in range(rows)]
    active = list(range(rows))
    eos = model.eos_token_ids
    may_stop = stop_filter(model, readout.stop)
    next_tok = select_tokens(first_logits, readout, gens)
    for step in range(readout.max_new_tokens):
        chosen = next_tok.tolist()
        keep = []
        for b, row in enumerate(active):
            tokens[row].append(chosen[b])
            ended = chosen[b] in eos or (
                may_stop(chosen[b]) and cut_at_stop(text := model.decode(tokens[row]), readout.stop) != text)
            if not ended:
                keep.append(b)
        if step == readout.max_new_tokens - 1 or not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep)
            cache.batch_select_indices(index.to(model.device))
            active = [active[b] for b in keep]
            next_tok, mask, positions = next_tok[index.to(next_tok.device)], mask[index], positions[index]
            if gens is not None:
                gens = [gens[b] for b in keep]
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype)], dim=1)
        logits, cache = model.forward(next_tok[:, None], attention_mask=mask, position_ids=(positions + step)[:, None],
                                      cache=cache, use_cache=True, logits_to_keep=1)
        next_tok = select_tokens(logits[:, -1], readout, gens)
    return tokens


def finish_generation(model: LanguageModel, new_ids: Sequence[int], readout: Generate) -> tuple[str, list[int]]:
    """Cut generated ids at the first end-of-sequence token and the text before the first stop string."""
    eos = model.eos_token_ids
    kept: list[int] = []
    for token in new_ids:
        if int(token) in eos:
            break
        kept.append(int(token))
    text = model.decode(kept)
    cut = cut_at_stop(text, readout.stop)
    if cut != text:  # keep the ids up to the token that completes the first stop string
        for end in range(1, len(kept) + 1):
            partial = model.decode(kept[:end])
            if cut_at_stop(partial, readout.stop) != partial:
                kept = kept[:end]
                break
    return cut, kept


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            idx = text.find(s)
            if 0 <= idx < cut:
                cut = idx
    return text[:cut]
