"""The batched engine: a whole sweep as batch rows, each group's shared work done once.

A run, in order:

1. *Sources* (:func:`capture_sources`): each distinct source prompt runs once, left-padded in batches, the
   forward stopped after the highest block any job reads.
2. *Mappings* (:func:`apply_mappings`): each distinct f is applied once to the stacked states it maps.
3. *Targets*: the planner (:mod:`~patchscopes.engine.planner`) groups the jobs, and each group runs by its
   strategy: the logit lens without a forward (:func:`run_lens`), a staircase over base runs (:func:`run_staircase`),
   or rows over a shared prefix (:func:`run_rows`, which also generates, through the one decode loop).
4. *Relevancy*: SelfIE's scores, as teacher-forced jobs planned and run like any other.

Every batch is sized by a :class:`~patchscopes.engine.budget.BatchBudget` and halved on GPU out-of-memory.
Only top-k readings are kept unless full logits are asked for. Results equal the reference engine's.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

import torch

from patchscopes.engine.budget import BatchBudget, chunks, kv_bytes_per_token, run_with_backoff
from patchscopes.engine.decode import decode, finish_generation, generators
from patchscopes.engine.hooks import StopForward, capture_plan, installed, row_plan
from patchscopes.engine.interventions import Write
from patchscopes.engine.jobs import Job
from patchscopes.engine.layer_skipping import Landing, staircase
from patchscopes.engine.padding import left_pad
from patchscopes.engine.planner import LENS, STAIRCASE, Continuation, Group, by_start, entry_layer, first_change, plan
from patchscopes.engine.prefix import cut_cache, expand_cache, per_row_prefix, prefix_cache, sharing
from patchscopes.engine.readouts import Generate, Readings, next_token_readings, top_readings
from patchscopes.engine.reference import run_writes
from patchscopes.engine.unembedding import VOCAB_CHUNK, unembedding_input
from patchscopes.models import LanguageModel
from patchscopes.models.shared_attention import prefixed_cache, shared_view


def run_batched(jobs: Sequence[Job], budget: BatchBudget, progress=None) -> list[Readings]:
    """Run ``jobs`` with shared work batched; results come back in the order of ``jobs``."""
    values = apply_mappings(jobs, capture_sources(jobs, budget))
    readings = run_groups(jobs, values, budget, progress)
    asks = [job for job in jobs if isinstance(job.readout, Generate) and job.readout.relevancy]
    for job, scores in zip(asks, relevancy(asks, readings, values, budget)):
        readings[job.index].relevancy = scores
    return [readings[job.index] for job in jobs]


def run_groups(jobs: Sequence[Job], values: dict[int, torch.Tensor], budget: BatchBudget,
               progress=None) -> dict[int, Readings]:
    """The readings of every job (f(h) in ``values``), group by group as the planner groups them."""
    readings: dict[int, Readings] = {}
    for group in plan(jobs, skips_blocks=skips_blocks):
        runner = {LENS: run_lens, STAIRCASE: run_staircase}.get(group.strategy, run_rows)
        readings.update(runner(group, values, budget, progress))
    return readings


def skips_blocks(model: LanguageModel) -> bool:
    """Whether rows may skip blocks: not on a model dispatched over several devices."""
    return len(set(getattr(model.hf, "hf_device_map", {"": 0}).values())) <= 1


# -- sources and mappings ----------------------------------------------------------------------------------
def capture_sources(jobs: Sequence[Job], budget: BatchBudget) -> dict[int, torch.Tensor]:
    """h for every job with a source: one batched, early-stopped forward per batch of distinct source prompts."""
    by_model: dict[LanguageModel, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.source is not None:
            by_model[job.source.model].append(job)
    out: dict[int, torch.Tensor] = {}
    for model, model_jobs in by_model.items():
        needs: dict[tuple[int, ...], set[tuple[int, str, int]]] = defaultdict(set)
        for job in model_jobs:
            needs[job.source.tokens].add((job.source.layer, job.source.site, job.source.position))
        prompts = sorted(needs, key=len)
        element = torch.finfo(model.dtype).bits // 8
        size = budget.rows_per_batch(len(prompts[-1]), len(prompts[-1]) * model.hidden_size * element * 16)
        captured: dict[tuple, torch.Tensor] = {}
        for batch in chunks(prompts, size):
            for part in run_with_backoff(lambda b, m=model, n=needs: _capture_batch(m, b, n), batch):
                captured.update(part)
        for job in model_jobs:
            s = job.source
            out[job.index] = captured[(s.tokens, s.layer, s.site, s.position)]
    return out


def _capture_batch(model: LanguageModel, prompts, needs) -> list[dict[tuple, torch.Tensor]]:
    ids, mask, positions, pads = left_pad(model, prompts)
    per_site: dict[tuple[int, str], list[tuple[int, int, tuple]]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        for layer, site, pos in needs[prompt]:
            per_site[(layer, site)].append((row, pads[row] + pos, (prompt, layer, site, pos)))
    store: dict = {}
    wanted = {key: (torch.tensor([e[0] for e in entries]), torch.tensor([e[1] for e in entries]))
              for key, entries in per_site.items()}
    with torch.no_grad(), installed(model, capture_plan(model, wanted, store)), contextlib.suppress(StopForward):
        model.forward(ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    parts: list[dict[tuple, torch.Tensor]] = [{} for _ in prompts]
    for key, entries in per_site.items():
        for k, (row, _, name) in enumerate(entries):
            parts[row][name] = store[key][k]
    return parts


def apply_mappings(jobs: Sequence[Job], hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """f(h) for every job with a source, each distinct mapping applied once to a stack of vectors."""
    groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
    for job in jobs:
        if job.source is not None:
            groups[(id(job.mapping), id(job.model))].append(job)
    out = {}
    with torch.no_grad():
        for group in groups.values():
            mapping, target = group[0].mapping, group[0].model
            device = hidden[group[0].index].device  # blocks of a dispatched model sit on several devices
            mapped = mapping(torch.stack([hidden[j.index].to(device) for j in group]))
            mapped = mapped.to(device=target.device, dtype=target.dtype)
            for k, job in enumerate(group):
                out[job.index] = mapped[k]
    return out


# -- the strategies ----------------------------------------------------------------------------------------
def forward_to_unembedding(model: LanguageModel, **kwargs) -> torch.Tensor:
    """Run the model up to its unembedding; the final-normed hidden states of the kept positions."""
    store: dict = {}
    with unembedding_input(model, store), contextlib.suppress(StopForward):
        model.forward(**kwargs)
    return store["hidden"]


def _read(model: LanguageModel, hidden: torch.Tensor, part: Sequence[Job]) -> list[Readings]:
    return next_token_readings(model, hidden, [j.readout for j in part], [j.answer_ids for j in part])


def run_lens(group: Group, values, budget: BatchBudget, progress) -> dict[int, Readings]:
    """Jobs whose write replaces the last block's output where it is read: final norm and unembedding only."""
    model = group.jobs[0].model

    def run(part: Sequence[Job]) -> list[Readings]:
        vectors = torch.stack([w.value for job in part for w in job.filled_writes(values.get(job.index))])
        with torch.no_grad():
            return _read(model, model.final_normed(vectors), part)

    return _in_parts(group.jobs, budget.rows or len(group.jobs), run, progress)


def _base_run(model: LanguageModel, job: Job, layers: set[int], first: int):
    """A base run (``job``'s tokens with its noise, soft input and knockout, no write): its cache and the states
    ``{layer: (n - first, d)}`` at positions ``first ..`` of ``layers`` (-1: the embeddings); ``None`` where
    blocks return tuples (they cannot be stood in for)."""
    n = len(job.tokens)
    store: dict = {}
    kinds: set[bool] = set()
    cols = torch.arange(first, n)
    wanted = {(layer, "block"): (torch.zeros(n - first, dtype=torch.long), cols) for layer in layers}
    probe = capture_plan(model, {}, store)
    probe.forward[(0, "block")].append(lambda module, args, output: kinds.add(isinstance(output, tuple)))
    base = row_plan(model, [run_writes(job, None, base_only=True)], [job.knockout])
    ids = torch.tensor([job.tokens])
    with torch.no_grad(), installed(model, base, capture_plan(model, wanted, store, stop=False), probe):
        _, cache = model.forward(ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(n)[None],
                                 use_cache=True, logits_to_keep=1)
    if True in kinds:
        return None
    return cache, {layer: store[(layer, "block")] for layer in layers}


def _prefix_plan(model: LanguageModel, job: Job, start: int):
    """The hooks of a prefix forward: the base's writes before ``start`` and its knockout."""
    writes = [w for w in run_writes(job, None, base_only=True) if w.position < start]
    return row_plan(model, [writes], [job.knockout])


def _prefix_at(model: LanguageModel, job: Job, cache, start: int):
    """The base run's cache of its tokens before ``start``: cut from ``cache``, or computed again where a layer
    does not hold them all (a sliding window); ``None`` for ``start == 0``."""
    if not start:
        return None
    cut = cut_cache(cache, start, len(job.tokens))
    return cut if cut is not None else prefix_cache(model, job.tokens[:start], _prefix_plan(model, job, start))


def run_staircase(group: Group, values, budget: BatchBudget, progress) -> dict[int, Readings]:
    """Next-token jobs on one prompt: each base run once, then rows over the tokens from their start, through
    the blocks from their entry (see :mod:`~patchscopes.engine.layer_skipping`)."""
    jobs = group.jobs
    first, model = jobs[0], jobs[0].model
    n, ids = len(first.tokens), first.tokens
    base_of: dict[int, int] = {}
    firsts: list[Job] = []
    for job in jobs:
        if id(job.noise) not in base_of:
            base_of[id(job.noise)] = len(firsts)
            firsts.append(job)
    entries = {job.index: entry_layer(job) for job in jobs}
    landing_layers = {entries[j.index] - 1 for j in jobs if entries[j.index] >= 0}
    lowest = min(first_change(job) for job in jobs)
    bases = [_base_run(model, job, landing_layers, lowest) for job in firsts]
    out: dict[int, Readings] = {}
    if any(base is None for base in bases):  # blocks that cannot be stood in for: rows through every block
        for sub in by_start(jobs):
            out.update(run_rows(sub, values, budget, progress))
        return out
    keep = n - first.readout_position
    element = torch.finfo(model.dtype).bits // 8
    for sub in by_start(jobs):
        start, members = sub.start, sub.jobs
        prefixes = [_prefix_at(model, job, cache, start) for job, (cache, _) in zip(firsts, bases)]
        if start and len(firsts) == 1 and shared_view(prefixes[0]) is None:
            # a prefix cache of a kind that cannot be shared: rows through every block, each with a copy
            out.update(run_rows(sub, values, budget, progress))
            continue
        members.sort(key=lambda j: entries[j.index])
        n_suffix = n - start
        kv = kv_bytes_per_token(model) * n // max(1, model.num_layers) if len(firsts) == 1 \
            else kv_bytes_per_token(model) * n
        size = budget.rows_per_batch(n_suffix, kv + n_suffix * model.hidden_size * element * 16
                                     + min(VOCAB_CHUNK, model.vocab_size) * 8)

        def run(part: Sequence[Job], start=start, prefixes=prefixes) -> list[Readings]:
            row_base = [base_of[id(j.noise)] for j in part]
            landings = _landings(part, entries, row_base, bases, start, lowest, values)
            hooked = [[w for w in j.filled_writes(values.get(j.index)) if w.layer >= entries[j.index]] for j in part]
            plan_ = row_plan(model, hooked, [first.knockout], offset=start, every_row=True)
            used = sorted(set(row_base))
            if start == 0:
                cache, context = None, contextlib.nullcontext()
            elif len(used) == 1:
                cache, context = shared_view(prefixes[used[0]]), sharing(model)
            else:
                cache, context = per_row_prefix(prefixes, torch.tensor(row_base)), contextlib.nullcontext()
            rows = len(part)
            with torch.no_grad(), context, installed(model, plan_), \
                    staircase(model, [entries[j.index] for j in part], landings):
                hidden = forward_to_unembedding(
                    model, input_ids=torch.tensor(list(ids[start:]))[None].expand(rows, -1),
                    attention_mask=torch.ones((rows, n), dtype=torch.long),
                    position_ids=torch.arange(start, n)[None].expand(rows, -1), cache=cache,
                    use_cache=cache is not None, logits_to_keep=keep)
            return _read(model, hidden[:, -keep], part)

        out.update(_in_parts(members, size, run, progress))
    return out


def _landings(part: Sequence[Job], entries: dict[int, int], row_base: list[int], bases, start: int, lowest: int,
              values) -> dict[int, Landing]:
    """Each landing layer's states and writes for the rows of ``part`` (sorted by entry)."""
    landings: dict[int, Landing] = {}
    at: dict[int, list[int]] = defaultdict(list)
    for r, job in enumerate(part):
        at[entries[job.index] - 1].append(r)
    for layer, rows in at.items():
        offset = rows[0]
        states = [bases[row_base[r]][1][layer][start - lowest:] for r in rows]
        shared = len({row_base[r] for r in rows}) == 1
        landing = Landing(states[0] if shared else torch.stack(states), [], [], None, [])
        vectors = []
        for r in rows:
            job = part[r]
            for w in job.filled_writes(values.get(job.index)):
                if w.layer == layer and w.site == "block":
                    landing.rows.append(r - offset)
                    landing.cols.append(w.position - start)
                    landing.adds.append(w.add)
                    vectors.append(w.value)
        landing.values = torch.stack(vectors) if vectors else None
        landings[layer] = landing
    return landings


def run_rows(group: Group, values, budget: BatchBudget, progress) -> dict[int, Readings]:
    """Rows that run every block over the tokens from the group's start, their interventions hooked, the prefix
    before it shared; next-token, teacher-forced or generated readouts."""
    jobs = group.jobs
    first, model, start = jobs[0], jobs[0].model, group.start
    n = len(first.tokens)
    readout = first.readout
    cache = prefix_cache(model, first.tokens[:start], _prefix_plan(model, first, start)) if start else None
    generating = isinstance(readout, Generate)
    shared_prefix = cache is not None and (prefixed_cache(cache) if generating else shared_view(cache)) is not None
    n_suffix = n - start
    element = torch.finfo(model.dtype).bits // 8
    new_tokens = readout.max_new_tokens if generating else 0
    if isinstance(readout, Continuation):
        keep, vocab = n - readout.first, model.vocab_size * (n - readout.first)
    else:
        keep = n - min(j.readout_position for j in jobs) if not generating else 1
        vocab = model.vocab_size if generating or any(j.readout.full_logits for j in jobs) else VOCAB_CHUNK
    kv = kv_bytes_per_token(model) * (n_suffix + new_tokens + (n + new_tokens) // max(1, model.num_layers)
                                      if shared_prefix else n + new_tokens)
    size = budget.rows_per_batch(n_suffix + new_tokens, kv + n_suffix * model.hidden_size * element * 16 + vocab * 8)

    def run(part: Sequence[Job]) -> list[Readings]:
        rows = len(part)
        input_ids = torch.tensor([list(j.tokens[start:]) for j in part])
        mask = torch.ones((rows, n), dtype=torch.long)
        positions = torch.arange(start, n)[None].expand(rows, -1)
        plan_ = row_plan(model, [run_writes(j, values.get(j.index)) for j in part], [j.knockout for j in part],
                         offset=start)
        if cache is None:
            rows_cache, context = None, contextlib.nullcontext()
        elif shared_prefix:
            rows_cache = prefixed_cache(cache) if generating else shared_view(cache)
            context = sharing(model)
        else:
            rows_cache, context = expand_cache(cache, rows), contextlib.nullcontext()
        with torch.no_grad(), context:
            with installed(model, plan_):
                if not generating:
                    kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=rows_cache,
                                  use_cache=rows_cache is not None, logits_to_keep=keep)
                    if isinstance(readout, Continuation):
                        return _continuations(model, part, model.forward(**kwargs)[0], keep)
                    hidden = forward_to_unembedding(model, **kwargs)
                    return _read(model, hidden[torch.arange(rows), [j.readout_position - n for j in part]], part)
                logits, rows_cache = model.forward(input_ids, attention_mask=mask, position_ids=positions,
                                                   cache=rows_cache, use_cache=True, logits_to_keep=1)
            readings = top_readings(model, logits[:, -1], readout.top_tokens, False)
            new_ids = decode(model, logits[:, -1], rows_cache, mask, readout,
                             generators(model, readout, [j.index for j in part]))
        for reading, tokens in zip(readings, new_ids):
            reading.generated_text, reading.generated_token_ids = finish_generation(model, tokens, readout)
        return readings

    return _in_parts(jobs, size, run, progress)


def _continuations(model: LanguageModel, part: Sequence[Job], logits: torch.Tensor, keep: int) -> list[Readings]:
    """p(token t + 1 | tokens ..t) over the last ``keep`` positions, as each row's ``relevancy`` field."""
    probs = torch.softmax(logits[:, :-1].float(), dim=-1)
    nexts = torch.tensor([list(j.tokens[-keep + 1:]) for j in part], device=probs.device)
    picked = probs.gather(-1, nexts[..., None])[..., 0].tolist()
    return [Readings([], [], [], relevancy=row) for row in picked]


def relevancy(jobs: Sequence[Job], readings: dict[int, Readings], values, budget: BatchBudget) -> list[list[float]]:
    """SelfIE's relevancy of each job's generated tokens: teacher-forced with its writes and without them, run
    as :class:`~patchscopes.engine.planner.Continuation` jobs (its noise, knockout and soft input in both)."""
    forced: list[Job] = []
    for job in jobs:
        generated = tuple(readings[job.index].generated_token_ids or ())
        filled = iter(job.filled_writes(values.get(job.index)))
        written = tuple(next(filled) if isinstance(i, Write) else i for i in job.interventions)
        for interventions in (written, tuple(i for i in written if not isinstance(i, Write))):
            forced.append(Job(len(forced), job.model, job.tokens + generated, interventions,
                              Continuation(len(job.tokens) - 1)))
    probs = run_groups([j for j in forced if len(j.tokens) > len(jobs[j.index // 2].tokens)], {}, budget)
    scores = []
    for k in range(len(jobs)):
        if 2 * k not in probs:
            scores.append([])
            continue
        with_writes, without = probs[2 * k].relevancy, probs[2 * k + 1].relevancy
        scores.append([float(a - b) for a, b in zip(with_writes, without)])
    return scores


def _in_parts(jobs: Sequence[Job], size: int, run, progress) -> dict[int, Readings]:
    """``run`` on ``jobs`` in parts of ``size`` rows (with the out-of-memory back-off), by job index."""
    out: dict[int, Readings] = {}
    for part in chunks(jobs, size):
        out.update(zip([j.index for j in part], run_with_backoff(run, part)))
        if progress is not None:
            progress.update(len(part))
    return out
