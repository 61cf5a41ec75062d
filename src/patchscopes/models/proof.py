"""Proving a layout when a model loads, on a few tokens, for discovered and declared layouts alike.

:func:`prove_layout` runs the model on a handful of tokens and checks what every patchscope relies on:

1. the logit lens at the last layer (final norm, unembedding and output transforms applied to the last
   block's output) equals the model's own logits;
2. writing a middle block's output back unchanged (the identity patch) reproduces the unpatched run;
3. changing that output at one position changes the logits from that position on and none before it (the
   blocks carry the residual stream, and the model is causal).

A model that fails gets one :class:`~patchscopes.errors.PatchscopesError` naming what did not match. Two more
checks decide whether the batched engine's fast path applies (:class:`FastPathSupport`); a model that fails
them still loads, and :func:`patchscopes.run` uses the plain hooked engine for it:

4. a prompt continued from the key/value cache of its first tokens, copied for two rows, gives the logits
   of one full forward (so target prefixes can be computed once and shared);
5. a left-padded batch gives each row the logits it gets alone (so prompts of different lengths can share a
   forward).

A sixth decides how rows share a prefix: two rows whose attention reads the batch-1 prefix once, through
shared-prefix attention (:mod:`~patchscopes.models.shared_attention`), give the full forward's logits in a
next-token forward and in a generation's prefill and decoding step; where they do not (an attention
implementation or kernel it does not reproduce), each layer concatenates the prefix to the rows' keys instead,
and :attr:`FastPathSupport.attention_reason` says why.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models.architectures import text_config
from patchscopes.models.shared_attention import (
    SUPPORTED,
    attention_implementation,
    prefixed_cache,
    shared_prefix_attention,
    shared_view,
)

if TYPE_CHECKING:
    from patchscopes.models.language_model import LanguageModel

PROBE_TEXT = "The Eiffel Tower is in Paris"
_HINT = (
    "give its layout by hand: load_model(..., spec=ArchitectureSpec(name=..., model_types=(...), blocks=..., "
    "final_norm=..., unembed=..., embed=...)) with the attribute paths of its decoder blocks, final norm, "
    "unembedding and token embedding (see docs/models.md)"
)


@dataclass(frozen=True)
class FastPathSupport:
    """Whether the batched engine's fast path gives exact results on a model, as proved at load.

    Attributes:
        prefix_cache: A prompt continued from a per-row copy of its prefix's cache gives the full forward's
            logits.
        left_padding: A left-padded batch gives each row its own logits.
        reason: Why the fast path does not apply, or ``None``.
        shared_attention: Rows read a shared prefix through shared-prefix attention (no copy per row).
        attention_reason: Why they do not, or ``None``.
    """

    prefix_cache: bool
    left_padding: bool
    reason: str | None = None
    shared_attention: bool = False
    attention_reason: str | None = None

    @property
    def batched(self) -> bool:
        """Whether the batched engine applies (both properties hold)."""
        return self.prefix_cache and self.left_padding


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference of ``a`` and ``b``, relative to the size of ``b``."""
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / (1.0 + b.abs().max()))


def _hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def _probe_ids(model: LanguageModel) -> list[int]:
    """A few tokens of :data:`PROBE_TEXT`; more than the attention window where that is short (tiny models)."""
    window = getattr(text_config(model.hf.config), "sliding_window", None)
    tokens = window + 4 if isinstance(window, int) and 0 < window <= 32 else 5
    ids = (model.encode(PROBE_TEXT) * tokens)[:tokens]
    filler = [i for i in range(3, 3 + tokens) if i < model.vocab_size]
    return ids + filler[: max(0, min(4, tokens) - len(ids))]


def _run(model: LanguageModel, batch: torch.Tensor, mask: torch.Tensor, edits: dict[int, object],
         store: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits of a batch; block outputs of ``store``'s keys saved there, ``edits[layer](hidden)`` applied."""

    def hook(layer: int):
        def fn(module, args, output):
            hidden = _hidden(output)
            if layer in edits:
                hidden = edits[layer](hidden)
                output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            if layer in store:
                store[layer] = hidden.detach().clone()
            return output

        return fn

    handles = [model.arch.blocks[layer].register_forward_hook(hook(layer)) for layer in {*edits, *store}]
    try:
        logits, _ = model.forward(batch, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    finally:
        for handle in handles:
            handle.remove()
    return logits


def _fail(model: LanguageModel, what: str) -> PatchscopesError:
    return PatchscopesError(
        f"{model.name} ({type(model.hf).__name__}, layout {model.arch.spec.name!r}) fails the load-time proof: {what}",
        hint=_HINT,
    )


def prove_layout(model: LanguageModel) -> FastPathSupport:
    """Check the layout of ``model`` on a few tokens; say whether the batched engine's fast path applies.

    Four small forwards: the plain run; one batch of the identity patch, a changed patch and a left-padded
    row; a prefix with its cache and its continuation on two rows.

    On a CPU the proof runs on one thread: its forwards are a few tokens long, and several threads on a busy
    CPU spin-wait for each other (the proof then takes tens of seconds instead of one or two).

    Raises:
        PatchscopesError: The logit lens at the last layer differs from the model's logits, the identity
            patch changes them, or a patch does not reach them (or reaches earlier positions).
    """
    threads = torch.get_num_threads()
    if model.device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
    try:
        return _prove(model)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _prove(model: LanguageModel) -> FastPathSupport:
    ids = _probe_ids(model)
    n, last, mid, at = len(ids), model.num_layers - 1, model.num_layers // 2, len(ids) // 2
    tol = _tolerance(model.dtype)
    x = torch.tensor([ids])
    with torch.no_grad():
        store: dict[int, torch.Tensor] = {mid: None, last: None}  # type: ignore[dict-item]
        try:
            logits = _run(model, x, torch.ones_like(x), {}, store)
        except Exception as err:  # any failure of an unknown model's forward
            raise _fail(model, f"a forward on {n} tokens fails ({type(err).__name__}: {err})") from err
        shape = tuple(store[last].shape) if isinstance(store[last], torch.Tensor) else None
        if shape != (1, n, model.hidden_size):
            raise _fail(model, f"block {last} returns {shape}, not a (batch, tokens, {model.hidden_size}) hidden "
                               "state")
        try:
            gap = _difference(model.head(store[last]), logits)
        except Exception as err:  # a final norm found in the wrong place may not even take the hidden state
            raise _fail(model, f"the logit lens at the last layer fails ({type(err).__name__}: {err})") from err
        if gap > tol:
            raise _fail(model, f"the logit lens at the last layer differs from the model's logits by {gap:.3g}: "
                               f"the final norm ({model.arch.spec.final_norm or 'none'!r}) or the output "
                               "transforms (soft-capping, logit scale) are not the model's")
        saved = store[mid]

        def patch(h: torch.Tensor) -> torch.Tensor:
            # row 0: the identity patch; row 1: the state at one position changed; other rows untouched
            h[0] = saved[0].to(h.device, h.dtype)
            h[1, at] = -h[1, at] + 1.0
            return h

        batch = torch.tensor([ids, ids, [model.pad_token_id, *ids[:-1]]])
        mask = torch.ones_like(batch)
        mask[2, 0] = 0
        try:
            out = _run(model, batch, mask, {mid: patch}, {})
            padding = max(_difference(out[2:, 1:], logits[:, :-1]), 0.0)
        except Exception as err:  # a model that cannot take a padded batch: prove the patches without it
            out = _run(model, batch[:2], mask[:2], {mid: patch}, {})
            padding = err
        gap = _difference(out[:1], logits)
        if gap > tol:
            raise _fail(model, f"writing the output of block {mid} back unchanged changes the logits by {gap:.3g}")
        if _difference(out[1:2, :at], logits[:, :at]) > tol:
            raise _fail(model, f"a patch at position {at} of block {mid} changes the logits of earlier positions "
                               "(the model is not causal, or its blocks mix positions)")
        if _difference(out[1:2, at:], logits[:, at:]) <= tol:
            raise _fail(model, f"a patch of the output of block {mid} does not reach the logits: "
                               f"{model.arch.spec.blocks!r} are not the blocks of the residual stream")
        return _fast_path(model, ids, logits, padding, tol)


def _reads_keys_elsewhere(model: LanguageModel, cache, ids, mask, positions, expected, tol: float) -> bool:
    """Whether rows that read the batch-1 prefix only through ``Cache.update`` (each layer's prefix keys and
    values, then their own), as the batched engine's shared prefix does, fail to reproduce ``expected`` in
    two forwards in a row."""
    view = shared_view(cache)
    if view is None:
        return True
    expected = expected.expand(ids.shape[0], -1, -1)
    try:
        for _ in range(2):  # twice: a layer that writes its state into the shared prefix spoils the second
            shared, _ = model.forward(ids, attention_mask=mask, position_ids=positions, cache=view, use_cache=True)
            if _difference(shared, expected) > tol:
                return True
    except Exception:  # a layer that reads the cache some other way
        return True
    return False


def _shared_attention_gap(model: LanguageModel, ids: list[int], logits: torch.Tensor, tol: float) -> str | None:
    """Why shared-prefix attention does not reproduce the full forward on two rows (``None``: it does), in a
    next-token forward and in a prefill followed by one decoding step."""
    base = attention_implementation(model)
    if base not in SUPPORTED:
        return f"it reproduces {' and '.join(SUPPORTED)} attention, not {base!r}"
    n, cut = len(ids), len(ids) - 3
    x = torch.tensor([ids])
    rows = 2
    try:
        _, cache = model.forward(x[:, :cut], attention_mask=torch.ones((1, cut), dtype=torch.long),
                                 position_ids=torch.arange(cut)[None], use_cache=True)
        view = shared_view(cache)
        if view is None:
            return f"the cache's layers ({type(cache.layers[0]).__name__}) cannot be shared"
        with shared_prefix_attention(model):
            shared, _ = model.forward(x[:, cut:].expand(rows, -1),
                                      attention_mask=torch.ones((rows, n), dtype=torch.long),
                                      position_ids=torch.arange(cut, n)[None].expand(rows, -1), cache=view,
                                      use_cache=True)
            gap = _difference(shared, logits[:, cut:].expand(rows, -1, -1))
            if gap > tol:
                return f"a next-token forward differs from the full forward by {gap:.3g}"
            rows_cache = prefixed_cache(cache)
            if rows_cache is None:  # a sliding window has dropped the prefix's first tokens: generation copies it
                return None
            first, rows_cache = model.forward(
                x[:, cut:n - 1].expand(rows, -1), attention_mask=torch.ones((rows, n - 1), dtype=torch.long),
                position_ids=torch.arange(cut, n - 1)[None].expand(rows, -1), cache=rows_cache, use_cache=True)
            step, _ = model.forward(x[:, n - 1:].expand(rows, -1),
                                    attention_mask=torch.ones((rows, n), dtype=torch.long),
                                    position_ids=torch.full((rows, 1), n - 1), cache=rows_cache, use_cache=True)
        gap = max(_difference(first, logits[:, cut:n - 1].expand(rows, -1, -1)),
                  _difference(step, logits[:, n - 1:].expand(rows, -1, -1)))
        if gap > tol:
            return f"a prefill and decoding step differ from the full forward by {gap:.3g}"
    except Exception as err:  # an attention module that passes what shared-prefix attention does not take
        return f"{type(err).__name__}: {err}"
    return None


def _fast_path(model: LanguageModel, ids: list[int], logits: torch.Tensor, padding: float | Exception,
               tol: float) -> FastPathSupport:
    n, cut = len(ids), len(ids) - 2
    x = torch.tensor([ids])
    reasons = []
    try:
        _, cache = model.forward(x[:, :cut], attention_mask=torch.ones((1, cut), dtype=torch.long),
                                 position_ids=torch.arange(cut)[None], use_cache=True)
        if cache is None:
            raise ValueError("the model returns no cache")
        suffix_ids = x[:, cut:].expand(2, -1)
        mask, positions = torch.ones((2, n), dtype=torch.long), torch.arange(cut, n)[None].expand(2, -1)
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(2)
        suffix, _ = model.forward(suffix_ids, attention_mask=mask, position_ids=positions, cache=copied,
                                  use_cache=True)
        prefix_ok = _difference(suffix, logits[:, cut:].expand(2, -1, -1)) <= tol
        if not prefix_ok:
            reasons.append("a prompt continued from its prefix's cache does not give the full forward's logits")
        elif _reads_keys_elsewhere(model, cache, suffix_ids, mask, positions, logits[:, cut:], tol):
            prefix_ok = False
            reasons.append("its blocks keep state in the cache other than keys and values read through "
                           "Cache.update, so rows cannot share one prefix")
    except Exception as err:  # caches of recurrent and state-space blocks fail in many ways
        prefix_ok = False
        reasons.append(f"its cache cannot be copied per row and continued ({type(err).__name__}: {err})")
    padding_ok = not isinstance(padding, Exception) and padding <= tol
    if isinstance(padding, Exception):
        reasons.append(f"a left-padded batch fails ({type(padding).__name__}: {padding})")
    elif not padding_ok:
        reasons.append("a left-padded row does not get the logits it gets alone")
    attention = _shared_attention_gap(model, ids, logits, tol) if prefix_ok else "the prefix cache cannot be shared"
    return FastPathSupport(prefix_ok, padding_ok, "; ".join(reasons) or None, attention is None,
                           None if attention is None else f"shared-prefix attention: {attention}")
