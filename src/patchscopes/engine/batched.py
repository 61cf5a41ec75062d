"""The batched engine: a whole sweep as batch rows, with the target prefix computed once.

Plan of a run:

1. *Sources.* Jobs are grouped by source model; each distinct source prompt is run once, left-padded in
   batches (positions shifted by the padding, attention masks and position ids passed), and the forward
   stops after the highest block any job reads.
2. *Mappings.* Each distinct mapping is applied once to the stacked hidden states it maps.
3. *Targets.* Jobs are grouped by (target model, target prompt, i*, readout). The target tokens before i*
   cannot be changed by any patch, so their key/value cache is computed once per group and shared by every
   row; each row runs only the tokens from i* on, with its own patch layer l* and vector f(h). A next-token
   readout at i* through the last layer needs no forward at all: the final norm and unembedding are applied
   to f(h) directly (logit lens). Generation patches at prefill only and decodes all rows together, rows
   leaving the batch as they finish.

Every batch is sized by a :class:`~patchscopes.engine.batching.BatchBudget` and halved on GPU out-of-memory.
Only top-k readings are kept unless full logits are asked for. Results equal the reference engine's.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

import torch

from patchscopes.engine.batching import BatchBudget, chunks, kv_bytes_per_token, run_with_backoff
from patchscopes.engine.hooks import StopForward, capture_hook, hooks_on, patch_hook
from patchscopes.engine.interventions import registered
from patchscopes.engine.jobs import Job, answer_logprobs, cut_at_stop, finish_generation, top_readings
from patchscopes.engine.layer_skipping import staircase, unpatched_suffix_states
from patchscopes.engine.padding import left_pad
from patchscopes.engine.prefix import expand_cache, prefix_cache, prefixed_cache, shared_prefix_view
from patchscopes.engine.readouts import Generate, NextToken, Readings
from patchscopes.engine.reference import target_run
from patchscopes.engine.relevancy import relevancy_scores
from patchscopes.engine.row_hooks import row_hooks, suffix_start
from patchscopes.engine.shared_base import run_shared_base, takes_shared_base
from patchscopes.engine.soft import run_soft_group, soft_key
from patchscopes.engine.unembedding import VOCAB_CHUNK, logits_of, top_k_logprobs, unembedding_input
from patchscopes.models import LanguageModel


def run_batched(jobs: Sequence[Job], budget: BatchBudget, progress=None) -> list[Readings]:
    """Run ``jobs`` with shared work batched; results come back in the order of ``jobs``."""
    sourced = [job for job in jobs if job.source_model is not None]
    hidden = capture_sources(sourced, budget)
    values = apply_mappings(sourced, hidden)
    readings: dict[int, Readings] = {}
    soft = [job for job in jobs if job.target_embeds is not None]
    readings.update(_run_soft_targets(soft, values, progress))
    pending = [job for job in jobs if job.target_embeds is None]
    rest = [job for job in pending if not takes_shared_base(job)]
    if len(rest) < len(pending):  # rows on a shared base run (noise, knockout) with one block write
        fast, left = run_shared_base([job for job in pending if takes_shared_base(job)], values, budget,
                                     _forward_to_unembedding, _next_token_readings, progress)
        readings.update(fast)
        rest += left
    for (model, ids, i_star, readout_key, _), group in _target_groups(rest).items():
        if readout_key[0] == "next":
            out = _run_next_token_group(model, ids, i_star, readout_key[1], group, values, budget, progress)
        else:
            out = _run_generate_group(model, ids, i_star, readout_key[1], group, values, budget, progress)
        readings.update(out)
    for job in jobs:
        if isinstance(job.readout, Generate) and job.readout.relevancy:
            readings[job.index].relevancy = relevancy_scores(job, values.get(job.index),
                                                             readings[job.index].generated_token_ids or [])
    return [readings[job.index] for job in jobs]


def _run_soft_targets(jobs: Sequence[Job], values: dict[int, torch.Tensor], progress) -> dict[int, Readings]:
    """Jobs whose target has a soft prompt: plain next-token patches in groups (same target, vectors, layer,
    positions) in :func:`~patchscopes.engine.soft.run_soft_group`; generation, and soft prompts with further
    interventions (writes, noise, knockout, answers), job by job through the reference engine's target run
    (with f(h) already captured; relevancy is added by :func:`run_batched`)."""
    groups: dict[tuple, list[Job]] = defaultdict(list)
    out: dict[int, Readings] = {}
    for job in jobs:
        if isinstance(job.readout, Generate) or not job.is_single_patch:
            with torch.no_grad():
                out[job.index] = target_run(
                    job.target_model, job.target_ids, job.readout, readout_position=job.readout_position,
                    writes=job.all_writes(values.get(job.index)), noise=job.noise,
                    knockout=job.knockout, answer_ids=job.answer_ids, embeds=job.target_embeds)
            _tick(progress, 1)
            continue
        key = (job.target_model, len(job.target_ids), soft_key(job.target_embeds),  # type: ignore[arg-type]
               job.target_layer, job.target_position, job.readout_position, job.readout)
        groups[key].append(job)
    for (model, *_), group in groups.items():
        out.update(run_soft_group(model, group[0].target_embeds, group, values, progress=progress))
    return out


# -- sources -----------------------------------------------------------------------------------------------
def capture_sources(jobs: Sequence[Job], budget: BatchBudget) -> dict[int, torch.Tensor]:
    """h for every job: one batched, early-stopped forward per batch of distinct source prompts."""
    by_model: dict[LanguageModel, list[Job]] = defaultdict(list)
    for job in jobs:
        by_model[job.source_model].append(job)
    out: dict[int, torch.Tensor] = {}
    for model, model_jobs in by_model.items():
        needs: dict[tuple[int, ...], set[tuple[int, str, int]]] = defaultdict(set)
        for job in model_jobs:
            needs[job.source_ids].add((job.source_layer, job.source_site, job.source_position))
        prompts = sorted(needs, key=len)
        longest = len(prompts[-1])
        element = torch.finfo(model.dtype).bits // 8
        size = budget.rows_per_batch(longest, longest * model.hidden_size * element * 16)
        captured: dict[tuple, torch.Tensor] = {}
        for batch in chunks(prompts, size):
            for part in run_with_backoff(lambda b, m=model, n=needs: _capture_batch(m, b, n), batch):
                captured.update(part)
        for job in model_jobs:
            out[job.index] = captured[(job.source_ids, job.source_layer, job.source_site, job.source_position)]
    return out


def _capture_batch(model: LanguageModel, prompts, needs) -> list[dict[tuple, torch.Tensor]]:
    ids, mask, positions, pads = left_pad(model, prompts)
    per_layer: dict[tuple[int, str], list[tuple[int, int, tuple]]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        for layer, site, pos in needs[prompt]:
            per_layer[(layer, site)].append((row, pads[row] + pos, (prompt, layer, site, pos)))
    top = max(per_layer)
    store: dict = {}
    hooks = {
        (layer, site): [capture_hook(
            torch.tensor([e[0] for e in entries]), torch.tensor([e[1] for e in entries]), store, (layer, site),
            stop=(layer, site) == top and site == "block",  # an MLP or attention site stops nothing
        )]
        for (layer, site), entries in per_layer.items()
    }
    with torch.no_grad(), registered(model, hooks), contextlib.suppress(StopForward):
        model.forward(ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    parts: list[dict[tuple, torch.Tensor]] = [{} for _ in prompts]
    for layer, entries in per_layer.items():
        for k, (row, _, key) in enumerate(entries):
            parts[row][key] = store[layer][k]
    return parts


# -- mappings ----------------------------------------------------------------------------------------------
def apply_mappings(jobs: Sequence[Job], hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """f(h) for every job, each distinct mapping applied once to a stack of vectors."""
    groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for job in jobs:
        groups[(id(job.mapping), id(job.target_model))].append(job)
    out = {}
    with torch.no_grad():
        for group in groups.values():
            mapping, target = group[0].mapping, group[0].target_model
            device = hidden[group[0].index].device  # blocks of a dispatched model sit on several devices
            mapped = mapping(torch.stack([hidden[j.index].to(device) for j in group]))
            mapped = mapped.to(device=target.device, dtype=target.dtype)
            for k, job in enumerate(group):
                out[job.index] = mapped[k]
    return out


# -- targets -----------------------------------------------------------------------------------------------
def _target_groups(jobs: Sequence[Job]) -> dict[tuple, list[Job]]:
    """Jobs grouped by target model, prompt, first changed position (i* for a plain patch), readout and
    whether they are plain patches (the fast paths) or carry other interventions (rows with hooks)."""
    groups: dict[tuple, list[Job]] = defaultdict(list)
    for job in jobs:
        key = ("next", job.readout_position) if isinstance(job.readout, NextToken) else ("generate", job.readout)
        start = job.target_position if job.is_plain else suffix_start(job)
        groups[(job.target_model, job.target_ids, start, key, job.is_plain)].append(job)
    return groups


@contextlib.contextmanager
def _write_hooks(model: LanguageModel, part: Sequence[Job], values: dict[int, torch.Tensor], i_star: int,
                 once: bool):
    """Each row's writes: the plain patch on blocks, or every intervention of jobs that carry more."""
    if all(job.is_plain for job in part):
        with hooks_on(model.arch.blocks, _patch_hooks(part, values, once)):
            yield
        return
    with registered(model, *row_hooks(part, values, i_star, once)):
        yield


def _patch_hooks(group: Sequence[Job], values: dict[int, torch.Tensor], once: bool) -> dict:
    """One hook per target layer l*, writing each row's f(h) at the first suffix token (i*)."""
    rows_by_layer: dict[int, list[int]] = defaultdict(list)
    for row, job in enumerate(group):
        rows_by_layer[job.target_layer].append(row)
    hooks = {}
    for layer, rows in rows_by_layer.items():
        vecs = torch.stack([values[group[r].index] for r in rows])
        hooks[layer] = patch_hook(torch.tensor(rows), torch.zeros(len(rows), dtype=torch.long), vecs, once=once)
    return hooks


def _suffix_inputs(ids: Sequence[int], i_star: int, rows: int):
    suffix = torch.tensor(list(ids[i_star:]))
    input_ids = suffix[None].expand(rows, -1).contiguous()
    mask = torch.ones((rows, len(ids)), dtype=torch.long)
    positions = torch.arange(i_star, len(ids))[None].expand(rows, -1).contiguous()
    return input_ids, mask, positions


def _readings_for(model: LanguageModel, logits: torch.Tensor, group: Sequence[Job], k_attr: str) -> list[Readings]:
    k_max = max(getattr(j.readout, k_attr) for j in group)
    full = any(getattr(j.readout, "full_logits", False) for j in group)
    readings = top_readings(model, logits, k_max, full)
    for reading, job in zip(readings, group):
        k = getattr(job.readout, k_attr)
        reading.top_tokens, reading.top_token_ids, reading.top_probs = (
            reading.top_tokens[:k], reading.top_token_ids[:k], reading.top_probs[:k])
        if not getattr(job.readout, "full_logits", False):
            reading.logits = None
    return readings


def _next_token_readings(model: LanguageModel, hidden: torch.Tensor, group: Sequence[Job]) -> list[Readings]:
    """Readings of final-normed hidden states ``(rows, d)``: the top-k read slice by slice of the vocabulary
    (no full logit matrix), unless a job asks for the full logits."""
    if any(j.answer_ids for j in group):
        return [r for part in chunks(range(len(group)), 64) for r in _answer_readings(
            model, hidden[part.start:part.stop], group[part.start:part.stop])]
    if any(j.readout.full_logits for j in group):
        return _readings_for(model, logits_of(model, hidden), group, "top_k")
    logprobs, ids = top_k_logprobs(model, hidden, max(j.readout.top_k for j in group))
    probs, ids = logprobs.exp().cpu().tolist(), ids.cpu().tolist()
    return [
        Readings(top_tokens=model.token_strings(ids[row][: job.readout.top_k]),
                 top_token_ids=ids[row][: job.readout.top_k], top_probs=probs[row][: job.readout.top_k])
        for row, job in enumerate(group)
    ]


def _answer_readings(model: LanguageModel, hidden: torch.Tensor, group: Sequence[Job]) -> list[Readings]:
    """Readings with the probabilities of each job's answers, from the full logits of ``hidden``."""
    logits = logits_of(model, hidden)
    readings = _readings_for(model, logits, group, "top_k")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for row, (reading, job) in enumerate(zip(readings, group)):
        if job.answer_ids:
            reading.answer_probs = answer_logprobs(logprobs[row], job.answer_ids)
    return readings


def _forward_to_unembedding(model: LanguageModel, **kwargs) -> torch.Tensor:
    """Run the model up to its unembedding; the final-normed hidden states of the kept positions."""
    store: dict = {}
    with unembedding_input(model, store), contextlib.suppress(StopForward):
        model.forward(**kwargs)
    return store["hidden"]


def _run_next_token_group(model, ids, i_star, readout_position, group, values, budget, progress):
    out: dict[int, Readings] = {}
    last = model.num_layers - 1
    plain = group[0].is_plain
    direct = [j for j in group if plain and j.target_layer == last and readout_position == i_star]
    forward = [j for j in group if not (plain and j.target_layer == last and readout_position == i_star)]
    for part in chunks(direct, budget.rows or len(direct) or 1):
        with torch.no_grad():
            hidden = model.final_normed(torch.stack([values[j.index] for j in part]))
            out.update(zip([j.index for j in part], _next_token_readings(model, hidden, part)))
        _tick(progress, len(part))
    if not forward:
        return out
    cache = prefix_cache(model, ids[:i_star])
    shared = shared_prefix_view(cache) if cache is not None else None
    n_suffix = len(ids) - i_star
    element = torch.finfo(model.dtype).bits // 8
    # logits: one vocabulary slice per row, or all of them where full logits are kept
    vocab = model.vocab_size if any(j.readout.full_logits for j in forward) else min(VOCAB_CHUNK, model.vocab_size)
    activations = n_suffix * model.hidden_size * element * 16 + vocab * 8
    keep = len(ids) - readout_position
    states = None
    if plain and (cache is None or shared is not None):
        states = unpatched_suffix_states(model, *_suffix_inputs(ids, i_star, 1), shared,
                                         {j.target_layer for j in forward})

    if states is not None:
        # Rows sorted by l*, many patch layers per forward, each row running only the blocks above its l*;
        # the prefix cache is shared, never copied (see patchscopes.engine.layer_skipping).
        kv_one_layer = kv_bytes_per_token(model) * len(ids) // max(1, model.num_layers)
        size = budget.rows_per_batch(n_suffix, kv_one_layer + activations)

        def run(part: Sequence[Job]) -> list[Readings]:
            input_ids, mask, positions = _suffix_inputs(ids, i_star, len(part))
            vecs = torch.stack([values[j.index] for j in part])
            with torch.no_grad():
                with staircase(model.arch.blocks, [j.target_layer for j in part], states, vecs):
                    hidden = _forward_to_unembedding(
                        model, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=shared,
                        use_cache=cache is not None, logits_to_keep=keep)
                return _next_token_readings(model, hidden[:, -keep], part)

        ordered = sorted(forward, key=lambda j: j.target_layer)
    else:
        # Fallback: every row runs every block of the suffix, with its own copy of the prefix cache.
        size = budget.rows_per_batch(n_suffix, kv_bytes_per_token(model) * len(ids) + activations)

        def run(part: Sequence[Job]) -> list[Readings]:
            input_ids, mask, positions = _suffix_inputs(ids, i_star, len(part))
            with torch.no_grad():
                with _write_hooks(model, part, values, i_star, once=False):
                    hidden = _forward_to_unembedding(
                        model, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                        cache=expand_cache(cache, len(part)), use_cache=cache is not None, logits_to_keep=keep)
                return _next_token_readings(model, hidden[:, -keep], part)

        ordered = forward
    for part in chunks(ordered, size):
        out.update(zip([j.index for j in part], run_with_backoff(run, part)))
        _tick(progress, len(part))
    return out


def _run_generate_group(model, ids, i_star, readout: Generate, group, values, budget, progress):
    out: dict[int, Readings] = {}
    cache = prefix_cache(model, ids[:i_star])
    shared = cache is not None and prefixed_cache(cache) is not None
    n_suffix = len(ids) - i_star
    element = torch.finfo(model.dtype).bits // 8
    total = len(ids) + readout.max_new_tokens
    # Each row stores its own tokens only when the prefix is shared (plus one layer's keys and values,
    # prefix included, while attention runs); otherwise a whole copy of the prefix too.
    kv = kv_bytes_per_token(model) * (n_suffix + readout.max_new_tokens + total // max(1, model.num_layers)) \
        if shared else kv_bytes_per_token(model) * total
    row_bytes = kv + n_suffix * model.hidden_size * element * 16 + model.vocab_size * 8
    size = budget.rows_per_batch(n_suffix + readout.max_new_tokens, row_bytes)

    def run(part: Sequence[Job]) -> list[Readings]:
        input_ids, mask, positions = _suffix_inputs(ids, i_star, len(part))
        with torch.no_grad():
            with _write_hooks(model, part, values, i_star, once=True):
                logits, part_cache = model.forward(
                    input_ids, attention_mask=mask, position_ids=positions,
                    cache=prefixed_cache(cache) if shared else expand_cache(cache, len(part)), use_cache=True,
                    logits_to_keep=1,
                )
            first = logits[:, -1]
            readings = _readings_for(model, first, part, "top_tokens")
            generators = _generators(model, readout, part)
            new_ids = decode(model, first, part_cache, len(ids), readout, generators)
        for reading, tokens in zip(readings, new_ids):
            reading.generated_text, reading.generated_token_ids = finish_generation(model, tokens, readout)
        return readings

    for part in chunks(group, size):
        out.update(zip([j.index for j in part], run_with_backoff(run, part)))
        _tick(progress, len(part))
    return out


def _generators(model: LanguageModel, readout: Generate, part: Sequence[Job]) -> list[torch.Generator] | None:
    if not readout.do_sample:
        return None
    gens = []
    for job in part:
        g = torch.Generator(device=model.device)
        g.manual_seed(readout.seed + job.index)
        gens.append(g)
    return gens


def select_tokens(logits: torch.Tensor, readout: Generate, generators: list[torch.Generator] | None) -> torch.Tensor:
    """The next token of each row: argmax, or a sample under temperature, top-k and top-p."""
    if not readout.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / max(readout.temperature, 1e-6)
    if readout.top_k:
        kth = logits.topk(min(readout.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if readout.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > readout.top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    assert generators is not None
    return torch.cat([torch.multinomial(probs[r], 1, generator=generators[r]) for r in range(len(generators))])


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


def decode(model: LanguageModel, first_logits: torch.Tensor, cache, length: int, readout: Generate,
           generators: list[torch.Generator] | None) -> list[list[int]]:
    """Decode every row from its prefill logits; rows leave the batch when they end.

    Args:
        model: The target model.
        first_logits: ``(rows, vocab)`` logits after the prompt.
        cache: The key/value cache of the prompt for all rows.
        length: The prompt's length (the position of the first new token).
        readout: Decoding settings.
        generators: One random generator per row when sampling.
    """
    rows = first_logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    active = list(range(rows))
    eos = model.eos_token_ids
    may_stop = stop_filter(model, readout.stop)
    next_tok = select_tokens(first_logits, readout, generators)
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
            next_tok = next_tok[index.to(next_tok.device)]
            if generators is not None:
                generators = [generators[b] for b in keep]
        n = len(active)
        logits, cache = model.forward(
            next_tok[:, None], attention_mask=torch.ones((n, length + step + 1), dtype=torch.long),
            position_ids=torch.full((n, 1), length + step, dtype=torch.long), cache=cache, use_cache=True,
            logits_to_keep=1,
        )
        next_tok = select_tokens(logits[:, -1], readout, generators)
    return tokens


def _tick(progress, n: int) -> None:
    if progress is not None:
        progress.update(n)
