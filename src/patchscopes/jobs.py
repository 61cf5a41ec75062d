"""Resolving patchscopes into jobs: models, token ids, layers and positions checked before anything runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.mappings import Mapping, as_mapping, check_mapping
from patchscopes.model import LanguageModel
from patchscopes.results import PatchResult, Readings
from patchscopes.scope import Generate, NextToken, Patchscope, Readout, resolve_position


@dataclass(eq=False)
class Job:
    """One patch with everything resolved: the unit of work of both engines."""

    index: int
    scope: Patchscope
    source_model: LanguageModel
    source_ids: tuple[int, ...]
    source_layer: int
    source_position: int
    target_model: LanguageModel
    target_ids: tuple[int, ...]
    target_layer: int
    target_position: int
    mapping: Mapping
    readout: Readout
    readout_position: int | None  # NextToken only
    source_text: str | None = None  # the source prompt as text, when it was given as token ids
    target_text: str | None = None  # the same for the target prompt

    def result(self, readings: Readings) -> PatchResult:
        """Wrap the readings of this job's patched run into a :class:`PatchResult`."""
        src_token = self.source_model.token_strings([self.source_ids[self.source_position]])[0]
        return PatchResult(
            source_model=self.source_model.name,
            source_prompt=self.source_text if self.source_text is not None else self.scope.source.prompt,
            source_layer=self.source_layer,
            source_position=self.source_position,
            source_token=src_token,
            target_model=self.target_model.name,
            target_prompt=self.target_text if self.target_text is not None else self.scope.target.prompt,
            target_layer=self.target_layer,
            target_position=self.target_position,
            mapping=self.mapping.name,
            readings=readings,
        )


def resolve_jobs(scopes: Sequence[Patchscope], model: LanguageModel | None) -> list[Job]:
    """Resolve every scope, checking layers, positions, prompts, readouts and mapping sizes.

    Raises:
        PatchscopesError: On the first invalid scope, naming it.
    """
    encoded: dict[tuple[int, str | tuple[int, ...]], list[int]] = {}
    texts: dict[tuple[int, tuple[int, ...]], str] = {}
    checked: set[tuple[int, int, int]] = set()

    def encode(m: LanguageModel, prompt: str | tuple[int, ...], what: str) -> list[int]:
        if isinstance(prompt, (tuple, list)):
            return _token_prompt(m, tuple(prompt), what)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PatchscopesError(f"the {what} is empty", hint=f"give a non-empty {what}")
        key = (id(m), prompt)
        if key not in encoded:
            encoded[key] = m.encode(prompt)
            if not encoded[key]:
                raise PatchscopesError(f"the {what} {prompt!r} has no tokens")
        return encoded[key]

    def _token_prompt(m: LanguageModel, prompt: tuple[int, ...], what: str) -> list[int]:
        key = (id(m), prompt)
        if key not in encoded:
            if not prompt:
                raise PatchscopesError(f"the {what} is empty", hint=f"give a non-empty {what}")
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < m.vocab_size for t in prompt):
                raise PatchscopesError(
                    f"the {what} is a sequence of token ids, but not all are integers in 0..{m.vocab_size - 1}",
                    hint="give text, or a tuple of the model's token ids",
                )
            encoded[key] = list(prompt)
        return encoded[key]

    def text(m: LanguageModel, prompt: str | tuple[int, ...]) -> str | None:
        if isinstance(prompt, str):
            return None
        key = (id(m), tuple(prompt))
        if key not in texts:
            texts[key] = m.decode(prompt)
        return texts[key]

    jobs = []
    for index, scope in enumerate(scopes):
        if not isinstance(scope, Patchscope):
            raise PatchscopesError(f"expected a Patchscope, got {type(scope).__name__}")
        src, tgt = scope.source, scope.target
        src_model = src.model or model
        if src_model is None:
            raise PatchscopesError(
                "no model to run the source on", hint="pass model=... or set Source(model=...)"
            )
        tgt_model = tgt.model or src.model or model
        src_ids = encode(src_model, src.prompt, "source prompt")
        tgt_ids = encode(tgt_model, tgt.prompt, "target prompt")
        src_layer = src_model.check_layer(src.layer, "source layer")
        tgt_layer = tgt_model.check_layer(tgt.layer, "target layer")
        src_pos = resolve_position(src_model, src.prompt, src_ids, src.position, "source position")
        tgt_pos = resolve_position(tgt_model, tgt.prompt, tgt_ids, tgt.position, "target position")
        readout = scope.readout
        readout_pos = None
        if isinstance(readout, NextToken):
            readout_pos = resolve_position(tgt_model, tgt.prompt, tgt_ids, readout.position, "readout position")
            if readout_pos < tgt_pos:
                raise PatchscopesError(
                    f"the readout position {readout_pos} comes before the target position {tgt_pos}, "
                    "so the patch cannot change it",
                    hint="read at or after the patched position (the default reads the last token)",
                )
            if readout.top_k < 1:
                raise PatchscopesError(f"top_k must be at least 1, got {readout.top_k}")
        elif isinstance(readout, Generate):
            if readout.max_new_tokens < 1:
                raise PatchscopesError(f"max_new_tokens must be at least 1, got {readout.max_new_tokens}")
        else:
            raise PatchscopesError(f"unknown readout {readout!r}", hint="use NextToken(...) or Generate(...)")
        mapping = as_mapping(tgt.mapping)
        key = (id(mapping), id(src_model), id(tgt_model))
        if key not in checked:
            check_mapping(mapping, src_model.hidden_size, tgt_model.hidden_size,
                          dtype=src_model.dtype, device=src_model.device)
            checked.add(key)
        jobs.append(
            Job(index, scope, src_model, tuple(src_ids), src_layer, src_pos, tgt_model, tuple(tgt_ids),
                tgt_layer, tgt_pos, mapping, readout, readout_pos,
                source_text=text(src_model, src.prompt), target_text=text(tgt_model, tgt.prompt))
        )
    return jobs


def top_readings(model: LanguageModel, logits: torch.Tensor, k: int, keep_full: bool) -> list[Readings]:
    """Top-k tokens and probabilities of each row of ``logits`` ``(n, vocab)``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    k = min(k, logprobs.shape[-1])
    values, indices = logprobs.topk(k, dim=-1)
    probs = values.exp().cpu().tolist()
    ids = indices.cpu().tolist()
    out = []
    for row in range(logits.shape[0]):
        out.append(
            Readings(
                top_tokens=model.token_strings(ids[row]),
                top_token_ids=ids[row],
                top_probs=probs[row],
                logits=logits[row].float().cpu().clone() if keep_full else None,
            )
        )
    return out


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
    if cut != text:
        # Keep the ids up to the token that completes the first stop string, as decoding stops there; the
        # reference engine generates past it, and both must report the same ids.
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
