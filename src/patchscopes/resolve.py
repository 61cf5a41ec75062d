"""Resolving patchscopes into engine jobs: models, token ids, layers, positions, readouts and mapping sizes
checked for every scope before anything runs; and the engine's readings wrapped back into results."""

from __future__ import annotations

from collections.abc import Sequence

from patchscopes.engine import Generate, Job, NextToken, Readings
from patchscopes.errors import PatchscopesError
from patchscopes.mappings import as_mapping, check_mapping
from patchscopes.models import LanguageModel
from patchscopes.results import PatchResult
from patchscopes.scope import Patchscope, resolve_position
from patchscopes.soft_prompt import SoftPrompt


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
            m.check_length(len(encoded[key]), what)
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
            m.check_length(len(prompt), what)
        return encoded[key]

    # A sweep repeats the same few layers, prompts and positions thousands of times: each is checked once.
    layers: dict[tuple, int] = {}
    positions: dict[tuple, int] = {}

    def layer_of(m: LanguageModel, layer: int, what: str) -> int:
        key = (id(m), layer, what, type(layer))
        if key not in layers:
            layers[key] = m.check_layer(layer, what)
        return layers[key]

    def position_of(m: LanguageModel, prompt, ids: list[int], position: int | str, what: str) -> int:
        key = (id(m), prompt if isinstance(prompt, str) else tuple(prompt), position, what, type(position))
        if key not in positions:
            positions[key] = resolve_position(m, prompt, ids, position, what)
        return positions[key]

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
        embeds = None
        tgt_prompt = tgt.prompt
        if isinstance(tgt_prompt, SoftPrompt):
            tgt_prompt.check_model(tgt_model)
            before, after = tgt_prompt.token_layout(tgt_model)
            embeds = (len(before), tgt_prompt.vectors.detach())
            tgt_prompt = tuple(before + [tgt_model.pad_token_id] * len(tgt_prompt) + after)
        tgt_ids = encode(tgt_model, tgt_prompt, "target prompt")
        src_layer = layer_of(src_model, src.layer, "source layer")
        tgt_layer = layer_of(tgt_model, tgt.layer, "target layer")
        src_pos = position_of(src_model, src.prompt, src_ids, src.position, "source position")
        tgt_pos = position_of(tgt_model, tgt_prompt, tgt_ids, tgt.position, "target position")
        readout = scope.readout
        readout_pos = None
        if isinstance(readout, NextToken):
            readout_pos = position_of(tgt_model, tgt_prompt, tgt_ids, readout.position, "readout position")
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
            tgt_model.check_length(len(tgt_ids) + readout.max_new_tokens,
                                   f"target prompt with {readout.max_new_tokens} generated tokens")
        else:
            raise PatchscopesError(f"unknown readout {readout!r}", hint="use NextToken(...) or Generate(...)")
        mapping = as_mapping(tgt.mapping)
        key = (id(mapping), id(src_model), id(tgt_model))
        if key not in checked:
            check_mapping(mapping, src_model.hidden_size, tgt_model.hidden_size,
                          dtype=src_model.dtype, device=src_model.device)
            checked.add(key)
        jobs.append(
            Job(index, src_model, tuple(src_ids), src_layer, src_pos, tgt_model, tuple(tgt_ids),
                tgt_layer, tgt_pos, mapping, readout, readout_pos,
                source_text=text(src_model, src.prompt),
                target_text=repr(tgt.prompt) if embeds is not None else text(tgt_model, tgt.prompt),
                target_embeds=embeds)
        )
    return jobs




def to_result(job: Job, scope: Patchscope, readings: Readings) -> PatchResult:
    """Wrap the readings of ``job``'s patched run into a :class:`PatchResult`."""
    src_token = job.source_model.token_strings([job.source_ids[job.source_position]])[0]
    return PatchResult(
        source_model=job.source_model.name,
        source_prompt=job.source_text if job.source_text is not None else scope.source.prompt,
        source_layer=job.source_layer,
        source_position=job.source_position,
        source_token=src_token,
        target_model=job.target_model.name,
        target_prompt=job.target_text if job.target_text is not None else scope.target.prompt,
        target_layer=job.target_layer,
        target_position=job.target_position,
        mapping=job.mapping.name,
        readings=readings,
    )
