"""Plain implementations of prior methods, written from their papers: the ground truth the patchscope
versions are tested (and benchmarked) against.

They use nothing of the engine: raw PyTorch hooks on the Hugging Face modules, one forward per measurement,
exactly as the papers describe the procedures.

- :func:`rome_causal_trace`: causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in
  GPT"): one batch holds the clean run and the corrupted runs (Gaussian or uniform noise added to, or written
  over, the subject's token embeddings), and for every (token, layer) cell one forward restores the clean
  state in the corrupted rows; :func:`rome_noise` is ROME's own draw of that noise.
- :func:`selfie_interpret`: SelfIE (Chen, Vondrick and Mao 2024): a hidden state injected at the placeholders of
  an interpretation prompt, greedy generation, and the relevancy score of each generated token.
- :func:`geva_knockout`: attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations in
  Auto-Regressive Language Models"): the attention mask of a window of layers is replaced by a causal mask
  with the blocked edges removed, one forward per window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from patchscopes.models import LanguageModel
from patchscopes.models.architectures import get_module


def _module(model: LanguageModel, layer: int, kind: str | None) -> nn.Module:
    block = model.arch.blocks[layer]
    if kind is None:
        return block
    return get_module(block, model.arch.spec.mlp if kind == "mlp" else model.arch.spec.attention)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def rome_noise(samples: int, n_tokens: int, d: int, scale: float, uniform_noise: bool = False) -> torch.Tensor:
    """ROME's noise: a fresh ``numpy.random.RandomState(1)`` draws standard normal values (or, with
    ``uniform_noise``, uniform ones on [-1, 1)) of shape ``(samples, n_tokens, d)``, times ``scale``
    (float64)."""
    rs = np.random.RandomState(1)
    shape = (samples, n_tokens, d)
    draw = rs.uniform(-1, 1, shape) if uniform_noise else rs.randn(*shape)
    return scale * torch.from_numpy(draw)


def rome_causal_trace(model: LanguageModel, ids: Sequence[int], subject: tuple[int, int], answer: int,
                      noise: torch.Tensor | float, kind: str | None = None, window: int = 10, *,
                      samples: int = 10, uniform_noise: bool = False, replace: bool = False,
                      token_range: str | Sequence[int] | None = None) -> tuple[float, float, torch.Tensor]:
    """Causal tracing as ROME describes it, one forward per (token, layer) cell.

    Args:
        model: The model.
        ids: The prompt's token ids.
        subject: The subject's token range ``[begin, end)``.
        answer: The answer's token id.
        noise: The noise of each corrupted row, ``(samples, end - begin, d)``; or, as ROME's ``noise``, a
            float: the scale of :func:`rome_noise` (``samples`` rows, uniform with ``uniform_noise``).
        kind: ``None`` restores the block output at one layer; ``"mlp"`` / ``"attn"`` restore that module's
            output at the ``window`` layers centred on the cell's layer.
        window: The window's size.
        samples: The corrupted rows where ``noise`` is a float.
        uniform_noise: Where ``noise`` is a float, draw it uniform (ROME's ``uniform_noise``).
        replace: Write the noise over the subject's embeddings instead of adding it (ROME's ``replace``).
            It corrupts every run here, the baseline too; ROME's ``calculate_hidden_flow`` leaves it out of
            the call that computes the baseline (``low_score``), which is then measured with added noise.
        token_range: The tokens traced, the rows of the table: ``None`` (all), ``"subject_last"``
            (``end - 1``) or a list of token indices, as ROME's ``trace_important_states`` takes.

    Returns:
        ``(p_clean, p_corrupted, p_restored)``: p(answer) of the clean run, of the corrupted runs (mean over
        rows) and of the restored runs, ``(traced tokens, layers)``.
    """
    n, n_layers = len(ids), model.num_layers
    begin, end = subject
    if not isinstance(noise, torch.Tensor):
        noise = rome_noise(samples, end - begin, model.hidden_size, float(noise), uniform_noise)
    samples = noise.shape[0]
    inputs = torch.tensor([list(ids)] * (samples + 1), device=model.device)
    if token_range is None:
        token_range = range(n)
    elif token_range == "subject_last":
        token_range = [end - 1]
    elif isinstance(token_range, str):
        raise ValueError(f"unknown token_range {token_range!r}")

    def corrupt(module, args, output):
        output = output.clone()
        if replace:
            output[1:, begin:end] = noise.to(output.device)
        else:
            output[1:, begin:end] += noise.to(output.device)
        return output

    def restore(tokens: Sequence[int]):
        def hook(module, args, output):
            h = _first(output)
            for t in tokens:
                h[1:, t] = h[0, t]
            return output
        return hook

    def probs(cells: Sequence[tuple[int, int]]) -> torch.Tensor:
        handles = [model.arch.embed.register_forward_hook(corrupt)]
        by_layer: dict[int, list[int]] = {}
        for t, layer in cells:
            by_layer.setdefault(layer, []).append(t)
        handles += [_module(model, layer, kind).register_forward_hook(restore(tokens))
                    for layer, tokens in by_layer.items()]
        try:
            with torch.no_grad():
                logits = model.hf(input_ids=inputs).logits[:, -1].float()
        finally:
            for handle in handles:
                handle.remove()
        return torch.softmax(logits, dim=-1)[:, answer].cpu()

    first = probs([])
    p_clean, p_corrupted = float(first[0]), float(first[1:].mean())
    table = torch.zeros(len(token_range), n_layers)
    for row, t in enumerate(token_range):
        for layer in range(n_layers):
            if kind is None:
                cells = [(t, layer)]
            else:
                lo, hi = max(0, layer - window // 2), min(n_layers, layer - (-window // 2))
                cells = [(t, j) for j in range(lo, hi)]
            table[row, layer] = probs(cells)[1:].mean()
    return p_clean, p_corrupted, table


def geva_knockout(model: LanguageModel, ids: Sequence[int], layers: Sequence[int], query: int,
                  keys: Sequence[int]) -> torch.Tensor:
    """The next-token probabilities at ``query`` with the edges ``query -> keys`` cut in ``layers``.

    As in Geva et al., the attention module of each blocked layer gets a fresh causal mask (additive,
    ``-inf`` where blocked) with the blocked edges removed, in place of the one the model built. The
    model must use eager or SDPA attention. Returns ``(vocab,)`` probabilities.
    """
    n = len(ids)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for k in keys:
        allowed[query, k] = False

    def replace_mask(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        additive = torch.zeros(n, n, dtype=hidden.dtype, device=hidden.device)
        additive[~allowed.to(hidden.device)] = torch.finfo(hidden.dtype).min
        kwargs["attention_mask"] = additive[None, None]
        return args, kwargs

    handles = [_module(model, layer, "attn").register_forward_pre_hook(replace_mask, with_kwargs=True)
               for layer in layers]
    try:
        with torch.no_grad():
            logits = model.hf(input_ids=torch.tensor([list(ids)], device=model.device)).logits[0, query].float()
    finally:
        for handle in handles:
            handle.remove()
    return torch.softmax(logits, dim=-1).cpu()


def selfie_interpret(model: LanguageModel, source_ids: Sequence[int], layer: int, position: int,
                     prompt_ids: Sequence[int], placeholders: Sequence[int], k: int = 1,
                     max_new_tokens: int = 30) -> tuple[list[int], list[float]]:
    """SelfIE as its paper describes it: the hidden state ``hidden_states[layer + 1][position]`` of the
    source run replaces the input of decoder layer ``k`` at every placeholder while the interpretation
    prompt is read (not during decoding); greedy generation; and the relevancy of each generated token, its
    probability with the injection minus without, both teacher-forced on the generated text.

    Returns:
        The generated ids (cut at the first end-of-sequence token) and their relevancy scores.
    """
    with torch.no_grad():
        out = model.hf(input_ids=torch.tensor([list(source_ids)], device=model.device), output_hidden_states=True)
    h = out.hidden_states[layer + 1][0, position]
    state = {"prefill": True}

    def inject(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden.shape[1] == 1 or not state["prefill"]:
            return None
        hidden = hidden.clone()
        hidden[:, list(placeholders)] = h.to(hidden.dtype)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
            return args, kwargs
        return (hidden, *args[1:]), kwargs

    def run_with_injection(fn):
        handle = model.arch.blocks[k].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            with torch.no_grad():
                return fn()
        finally:
            handle.remove()

    prompt = torch.tensor([list(prompt_ids)], device=model.device)
    eos = sorted(model.eos_token_ids) or None
    sequences = run_with_injection(lambda: model.hf.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=model.pad_token_id))
    generated = []
    for token in sequences[0, len(prompt_ids):].tolist():
        if token in model.eos_token_ids:
            break
        generated.append(token)
    if not generated:
        return [], []
    full = torch.tensor([list(prompt_ids) + generated], device=model.device)
    n = len(prompt_ids)

    def token_probs(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits[0, n - 1: n - 1 + len(generated)].float(), dim=-1)
        return probs[torch.arange(len(generated)), torch.tensor(generated, device=probs.device)]

    with_injection = token_probs(run_with_injection(lambda: model.hf(input_ids=full).logits))
    with torch.no_grad():
        without = token_probs(model.hf(input_ids=full).logits)
    return generated, (with_injection - without).tolist()
