"""Resolving patchscopes into engine jobs: models, token ids, layers, positions, readouts and mapping sizes
checked for every scope before anything runs; and the engine's readings wrapped back into results."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from patchscopes.engine import AnswerProbs, Generate, Job, NextToken, Readings
from patchscopes.engine.interventions import EMBEDDINGS, SITES, Knockout, Noise, Read, SoftInput
from patchscopes.engine.interventions import Write as EngineWrite
from patchscopes.errors import PatchscopesError, check_integer, check_text
from patchscopes.mappings import as_mapping, check_mapping
from patchscopes.models import LanguageModel
from patchscopes.results import PatchResult
from patchscopes.scope import EMBEDDINGS as EMBEDDINGS_NAME
from patchscopes.scope import (
    AttentionKnockout,
    EmbeddingNoise,
    Patchscope,
    Target,
    Write,
    resolve_position,
    token_span,
)
from patchscopes.soft_prompt import SoftPrompt


def resolve_jobs(scopes: Sequence[Patchscope], model: LanguageModel | None) -> list[Job]:
    """Resolve every scope, checking layers, positions, prompts, readouts and mapping sizes.

    Raises:
        PatchscopesError: On the first invalid scope, naming it.
    """
    encoded: dict[tuple[int, str | tuple[int, ...]], list[int]] = {}
    texts: dict[tuple[int, tuple[int, ...]], str] = {}
    checked: set[tuple[int, int, int]] = set()
    resolved: dict[tuple[int, int, tuple], Noise] = {}  # one Noise per EmbeddingNoise, model and prompt

    def encode(m: LanguageModel, prompt: str | tuple[int, ...], what: str) -> list[int]:
        if isinstance(prompt, (tuple, list)):
            return _token_prompt(m, tuple(prompt), what)
        if not isinstance(prompt, str) or not prompt.strip():
            raise PatchscopesError(f"the {what} is empty", hint=f"give a non-empty {what}")
        key = (id(m), prompt)
        if key not in encoded:
            encoded[key] = m.encode(check_text(prompt, what))
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

    def layer_of(m: LanguageModel, layer: int | str, site: str, what: str) -> int:
        key = (id(m), layer, site, what, type(layer))
        if key not in layers:
            layers[key] = _layer(m, layer, site, what)
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

    tuples: dict[int, tuple[int, ...]] = {}

    def shared(ids: list[int]) -> tuple[int, ...]:
        """One tuple per encoded prompt, shared by all its jobs: a sweep of 15,000 patches over a 600-token
        prompt held a copy per job (72 MB)."""
        if id(ids) not in tuples:
            tuples[id(ids)] = tuple(ids)
        return tuples[id(ids)]

    jobs = []
    for index, scope in enumerate(scopes):
        if not isinstance(scope, Patchscope):
            raise PatchscopesError(f"expected a Patchscope, got {type(scope).__name__}")
        src, tgt = scope.source, scope.target
        src_model = (src.model if src is not None else None) or model
        tgt_model = tgt.model or (src.model if src is not None else None) or model
        if src is not None and src_model is None:
            raise PatchscopesError(
                "no model to run the source on", hint="pass model=... or set Source(model=...)"
            )
        if tgt_model is None:
            raise PatchscopesError("no model to run the target on", hint="pass model=... or set Target(model=...)")
        embeds = None
        tgt_prompt = tgt.prompt
        if isinstance(tgt_prompt, SoftPrompt):  # token ids with placeholders where the vectors go
            tgt_prompt.check_model(tgt_model)
            before, after = tgt_prompt.token_layout(tgt_model)
            embeds = SoftInput(len(before), tgt_prompt.vectors.detach())
            tgt_prompt = tuple(before + [tgt_model.pad_token_id] * len(tgt_prompt) + after)
        tgt_ids = encode(tgt_model, tgt_prompt, "target prompt")
        if src is not None:
            src_ids = encode(src_model, src.prompt, "source prompt")
            src_layer = layer_of(src_model, src.layer, src.site, "source layer")
            src_pos = position_of(src_model, src.prompt, src_ids, src.position, "source position")
            tgt_layer = layer_of(tgt_model, tgt.layer, tgt.site, "target layer")
            tgt_pos = position_of(tgt_model, tgt_prompt, tgt_ids, tgt.position, "target position")
        else:
            src_model, src_ids, src_layer, src_pos, tgt_layer, tgt_pos = None, (), -1, -1, -1, -1
        extras = _interventions(tgt_model, tgt, tgt_ids, resolved)
        readout = scope.readout
        readout_pos = None
        if isinstance(readout, NextToken):
            readout_pos = position_of(tgt_model, tgt_prompt, tgt_ids, readout.position, "readout position")
            changed = [p for p in (tgt_pos, *extras["changed"]) if p >= 0]
            if changed and readout_pos < min(changed):
                raise PatchscopesError(
                    f"the readout position {readout_pos} comes before the target position {min(changed)}, "
                    "so the patch cannot change it",
                    hint="read at or after the patched position (the default reads the last token)",
                )
            check_integer(readout.top_k, "top_k")
            if readout.top_k < 1:
                raise PatchscopesError(f"top_k must be at least 1, got {readout.top_k}")
            if readout.top_k > tgt_model.vocab_size:
                raise PatchscopesError(
                    f"top_k {readout.top_k} is more than the vocabulary of {tgt_model.name} "
                    f"({tgt_model.vocab_size} tokens)", hint=f"use a top_k of 1..{tgt_model.vocab_size}")
        elif isinstance(readout, Generate):
            if readout.max_new_tokens < 1:
                raise PatchscopesError(f"max_new_tokens must be at least 1, got {readout.max_new_tokens}")
            tgt_model.check_length(len(tgt_ids) + readout.max_new_tokens,
                                   f"target prompt with {readout.max_new_tokens} generated tokens")
        else:
            raise PatchscopesError(f"unknown readout {readout!r}", hint="use NextToken(...) or Generate(...)")
        mapping = as_mapping(tgt.mapping)
        key = (id(mapping), id(src_model), id(tgt_model))
        if src_model is not None and key not in checked:
            check_mapping(mapping, src_model.hidden_size, tgt_model.hidden_size,
                          dtype=src_model.dtype, device=src_model.device)
            checked.add(key)
        answer_ids = ()
        if isinstance(readout, AnswerProbs):
            answer_ids = tuple(answer_token(tgt_model, tgt.prompt, tgt_ids, a) for a in readout.answers)
        # In the order they apply: the target's input (soft prompt, noise), the patch, further writes, knockout.
        interventions = [item for item in (embeds, extras["noise"]) if item is not None]
        source = None
        if src is not None:
            source = Read(src_model, shared(src_ids), src_layer, src_pos, src.site)
            interventions.append(EngineWrite(tgt_layer, tgt_pos, None, tgt.site, tgt.add))
        interventions += extras["writes"]
        if extras["knockout"] is not None:
            interventions.append(extras["knockout"])
        jobs.append(
            Job(index, tgt_model, shared(tgt_ids), tuple(interventions), readout, readout_pos, source=source,
                mapping=mapping, answer_ids=answer_ids,
                source_text=None if src is None else text(src_model, src.prompt),
                target_text=repr(tgt.prompt) if embeds is not None else text(tgt_model, tgt.prompt))
        )
    return jobs


def _layer(model: LanguageModel, layer, site: str, what: str) -> int:
    """A layer index, or :data:`~patchscopes.engine.interventions.EMBEDDINGS` for ``"embeddings"``."""
    if site not in SITES:
        raise PatchscopesError(f"unknown site {site!r}", hint=f"use one of {', '.join(SITES)}")
    if layer == EMBEDDINGS_NAME:
        if site != "block":
            raise PatchscopesError(f"the embeddings have no {site} site", hint="use site='block'")
        return EMBEDDINGS
    return model.check_layer(layer, what)


def _interventions(model: LanguageModel, target: Target, ids: list[int], resolved: dict) -> dict:
    """The target's further writes, noise and knockout resolved, and the positions they change.

    Scopes sharing one :class:`EmbeddingNoise` object on one prompt share one resolved noise, so the
    batched engine runs their common corrupted run once."""
    writes, changed = [], []
    if not isinstance(target.add, bool):
        raise PatchscopesError(f"Target(add=...) must be True or False, got {target.add!r}")
    if not isinstance(target.writes, (tuple, list)) or not all(isinstance(w, Write) for w in target.writes):
        raise PatchscopesError(f"Target(writes=...) must be a tuple of Write, got {target.writes!r}",
                               hint="e.g. writes=(Write(layer=3, position=-1, value=v),)")
    for k, w in enumerate(target.writes):
        layer = _layer(model, w.layer, w.site, f"layer of write {k}")
        pos = resolve_position(model, target.prompt, ids, w.position, f"position of write {k}")
        if not isinstance(w.add, bool):
            raise PatchscopesError(f"write {k}: add must be True or False, got {w.add!r}")
        value = w.value
        if value is not None:
            value = _as_vector(value, f"the value of write {k}")
            if value.shape != (model.hidden_size,):
                raise PatchscopesError(f"write {k} has a value of shape {tuple(value.shape)}, "
                                       f"not ({model.hidden_size},)")
        writes.append(EngineWrite(layer, pos, value, w.site, w.add))
        changed.append(pos)
    noise = None
    if target.noise is not None:
        key = (id(target.noise), id(model), tuple(ids))
        if key not in resolved:
            resolved[key] = resolve_noise(model, target.prompt, ids, target.noise)
        noise = resolved[key]
        changed += list(noise.positions)
    knockout = None
    if target.knockout is not None:
        knockout = resolve_knockout(model, target.prompt, ids, target.knockout)
        changed.append(knockout.query)
    return {"writes": tuple(writes), "noise": noise, "knockout": knockout, "changed": changed}


def _as_vector(value: object, what: str) -> torch.Tensor:
    """``value`` as a finite tensor (detached), or a :class:`PatchscopesError` naming ``what``."""
    try:
        tensor = torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError):
        raise PatchscopesError(f"{what} must be a tensor of numbers, got {type(value).__name__}") from None
    if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
        raise PatchscopesError(f"{what} must hold finite floating-point numbers (no NaN or inf)",
                               hint="give a float tensor of the model's width")
    return tensor


def resolve_noise(model: LanguageModel, prompt, ids: list[int], noise: EmbeddingNoise) -> Noise:
    """The noise's token positions and vectors (drawn from its seed unless given), added or replacing."""
    positions = token_span(model, prompt, ids, noise.positions, "noise position")
    if noise.values is not None:
        values = torch.as_tensor(noise.values).detach()
        if values.shape != (len(positions), model.hidden_size):
            raise PatchscopesError(
                f"the noise has shape {tuple(values.shape)}, but {len(positions)} tokens of width "
                f"{model.hidden_size} are noised",
                hint=f"give a tensor of shape ({len(positions)}, {model.hidden_size})")
        if not bool(torch.isfinite(values).all()):
            raise PatchscopesError("the noise values hold NaN or infinite numbers", hint="give finite noise values")
    else:
        if not (isinstance(noise.scale, (int, float)) and not isinstance(noise.scale, bool)
                and math.isfinite(noise.scale) and noise.scale >= 0):
            raise PatchscopesError(f"the noise scale must be a finite number, at least 0, got {noise.scale!r}",
                                   hint="e.g. EmbeddingNoise(..., scale=0.1)")
        check_integer(noise.seed, "the noise seed")
        generator = torch.Generator().manual_seed(int(noise.seed))
        values = torch.randn((len(positions), model.hidden_size), generator=generator) * noise.scale
    return Noise(positions, values, replace=bool(noise.replace))


def resolve_knockout(model: LanguageModel, prompt, ids: list[int], knockout: AttentionKnockout) -> Knockout:
    """The knockout's layers, query and key positions resolved."""
    if not isinstance(knockout.layers, (tuple, list, range)):
        raise PatchscopesError(f"the knockout's layers must be a tuple of layer indices, got {knockout.layers!r}",
                               hint="e.g. AttentionKnockout(layers=(3, 4, 5), keys='Eiffel')")
    if not knockout.layers:
        raise PatchscopesError("the knockout has no layers", hint="give at least one layer")
    layers = tuple(sorted({model.check_layer(layer, "knockout layer") for layer in knockout.layers}))
    query = resolve_position(model, prompt, ids, knockout.query, "knockout query")
    keys = token_span(model, prompt, ids, knockout.keys, "knockout keys")
    if any(k > query for k in keys):
        raise PatchscopesError(f"knockout keys {keys} come after the query {query}; a causal model never "
                               "attends to them", hint="give keys at or before the query position")
    return Knockout(layers, query, keys)


def answer_token(model: LanguageModel, prompt, ids: list[int], answer: str | int) -> int:
    """The first token of ``answer`` as it continues ``prompt`` (see :class:`AnswerProbs`)."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < model.vocab_size:
            raise PatchscopesError(f"answer token id {answer} is outside the vocabulary of {model.name}")
        return answer
    if not isinstance(answer, str) or not answer.strip():
        raise PatchscopesError("an answer is empty", hint="give the answer's text, e.g. ' Paris'")
    if isinstance(prompt, str):
        full = model.encode(prompt + answer)
        if full[: len(ids)] == list(ids) and len(full) > len(ids):
            return full[len(ids)]
    alone = list(model.tokenizer(check_text(answer, "answer"), add_special_tokens=False)["input_ids"])
    if not alone:
        raise PatchscopesError(f"the answer {answer!r} has no tokens")
    return alone[0]




def check_readings(job: Job, scope: Patchscope, readings: Readings) -> None:
    """Refuse readings with a NaN or infinite probability (the model or the mapping overflowed): an error naming
    the patch, never a silent NaN row. Only the few numbers kept are looked at (the top-k, the answers')."""
    values = [*readings.top_probs, *(readings.answer_probs or ()), *(readings.relevancy or ())]
    if all(math.isfinite(v) for v in values):
        return
    bad = next(v for v in values if not math.isfinite(v))
    if job.source is None or job.patch is None:
        where = f"the target run of {_prompt_text(job.target_text or scope.target.prompt)}"
    else:
        src, patch = job.source, job.patch
        where = (f"patch {job.index} (source layer {src.layer}, position {src.position} of "
                 f"{_prompt_text(job.source_text or scope.source.prompt)} → target layer {patch.layer}, position "
                 f"{patch.position})")
    raise PatchscopesError(
        f"{where} gave a probability of {bad}: the run produced NaN or infinite values",
        hint="check the mapping's and the model's weights for NaN/inf, or use --dtype float32 (float16 and bfloat16 "
             "can overflow)")


def _prompt_text(text: object) -> str:
    if not isinstance(text, str):
        return "a prompt of token ids" if isinstance(text, (tuple, list)) else repr(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def to_result(job: Job, scope: Patchscope, readings: Readings) -> PatchResult:
    """Wrap the readings of ``job``'s patched run into a :class:`PatchResult`.

    Raises:
        PatchscopesError: The readings hold NaN or infinite probabilities (:func:`check_readings`).
    """
    check_readings(job, scope, readings)
    target_prompt = job.target_text if job.target_text is not None else scope.target.prompt
    patch = job.patch
    if job.source is None or patch is None:  # a target run with interventions only
        return PatchResult(
            source_model="", source_prompt="", source_layer=-1, source_position=-1, source_token="",
            target_model=job.model.name, target_prompt=target_prompt, target_layer=-1, target_position=-1,
            mapping="", readings=readings,
        )
    src = job.source
    return PatchResult(
        source_model=src.model.name,
        source_prompt=job.source_text if job.source_text is not None else scope.source.prompt,
        source_layer=EMBEDDINGS_NAME if src.layer == EMBEDDINGS else src.layer,
        source_position=src.position,
        source_token=src.model.token_labels([src.tokens[src.position]])[0],
        target_model=job.model.name,
        target_prompt=target_prompt,
        target_layer=EMBEDDINGS_NAME if patch.layer == EMBEDDINGS else patch.layer,
        target_position=patch.position,
        mapping=job.mapping.name,
        readings=readings,
    )
