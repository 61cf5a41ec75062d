"""Rows that differ from a shared *base run* by one write: causal tracing's restored states, on the batched
engine's fast path.

A base run is the target prompt with its embedding noise and attention knockout and no write. A row that
writes one vector at block output ``(l, s)`` of that run agrees with the base run at every position before
``s`` (causally unaffected) and at every block up to ``l`` (unaffected below the write). So the base run is
computed once, with its key/value cache and the output of every block at every position, and each row runs
only the tokens from ``s`` on, through the blocks above ``l``:

- the prefix (tokens before ``s``) comes from the base run's cache, cut at ``s`` and shared by all rows;
- rows of many write layers share one forward through :func:`~patchscopes.engine.layer_skipping.staircase`,
  which feeds each row the base run's states at its write layer with its vector written at ``s``;
- the knockout's masks apply to the rows' own queries, as in the base run.

Jobs of other shapes (several writes, MLP or attention sites, generation) run through the generic path
(:mod:`patchscopes.engine.row_hooks`).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from patchscopes.engine.batching import BatchBudget, chunks, kv_bytes_per_token, run_with_backoff
from patchscopes.engine.hooks import capture_hook
from patchscopes.engine.interventions import (
    EMBEDDINGS,
    Write,
    knockout_pre_hook,
    one_row_hooks,
    registered,
)
from patchscopes.engine.jobs import Job
from patchscopes.engine.layer_skipping import staircase
from patchscopes.engine.readouts import NextToken, Readings
from patchscopes.models import LanguageModel


def takes_shared_base(job: Job) -> bool:
    """Whether ``job`` is one block-output write on a base run with noise or knockout, read as next token."""
    if not isinstance(job.readout, NextToken) or (job.noise is None and job.knockout is None):
        return False
    if job.readout.full_logits:
        return False
    writes = job.all_writes(None)
    return len(writes) == 1 and writes[0].site == "block" and writes[0].layer != EMBEDDINGS


def _group_key(job: Job) -> tuple:
    """Jobs whose base runs differ only by their noise: their rows share forwards."""
    return (job.target_model, job.target_ids, job.readout_position, job.knockout)


def _base_run(model: LanguageModel, ids: Sequence[int], job: Job):
    """The base run: its cache and every block's output at every position, ``{layer: (n, d)}``; ``None``
    where its cache cannot be cut and shared (sliding-window or other cache layers)."""
    n = len(ids)
    store: dict = {}
    plan, pre = one_row_hooks(model, [], job.noise, job.knockout, knockout_rows=None)
    for layer in range(model.num_layers):
        plan[(layer, "block")].append(
            capture_hook(torch.zeros(n, dtype=torch.long), torch.arange(n), store, layer, stop=False))
    input_ids = torch.tensor([list(ids)])
    with registered(model, plan, pre):
        _, cache = model.forward(input_ids, attention_mask=torch.ones_like(input_ids),
                                 position_ids=torch.arange(n)[None], use_cache=True, logits_to_keep=1)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" or layer.keys.shape[-2] != n for layer in layers):
        return None
    return cache, store


def _per_row_prefix(caches: Sequence, length: int, row_base: torch.Tensor):
    """A cache view for a forward whose rows attend to the first ``length`` tokens of their own base run's
    cache (``caches[row_base[r]]``); like :func:`~patchscopes.engine.prefix.shared_prefix_view`, it stores
    nothing. The rows that call it are always the first ones of the batch (the staircase's head)."""
    keys = [torch.cat([c.layers[i].keys[..., :length, :] for c in caches]) for i in range(len(caches[0].layers))]
    values = [torch.cat([c.layers[i].values[..., :length, :] for c in caches])
              for i in range(len(caches[0].layers))]
    view = _cut(caches[0], length)

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        index = row_base[: key_states.shape[0]].to(key_states.device)
        return (torch.cat([keys[layer_idx].index_select(0, index), key_states], dim=-2),
                torch.cat([values[layer_idx].index_select(0, index), value_states], dim=-2))

    view.update = update
    return view


def _cut(cache, length: int):
    """A copy of ``cache`` holding only its first ``length`` tokens."""
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        cut = copy.copy(layer)
        cut.keys, cut.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        out.layers.append(cut)
    return out


def run_shared_base(jobs: Sequence[Job], values: dict[int, torch.Tensor], budget: BatchBudget,
                    forward: Callable, readings: Callable, progress=None) -> tuple[dict[int, Readings], list[Job]]:
    """Run the jobs :func:`takes_shared_base` accepts; returns their readings and the jobs it could not
    take (their base run's cache cannot be shared), for the generic path.

    Rows of every base run of a prompt (causal tracing's noise samples) that write at the same position share
    forwards: each attends to its own base run's prefix and starts from its own base run's states.

    Args:
        jobs: The jobs.
        values: f(h) of each job with a source.
        budget: Micro-batch limits.
        forward: Runs the model to its unembedding, returning the final-normed kept hidden states.
        readings: Turns final-normed hidden states ``(rows, d)`` into each job's readings.
        progress: A progress bar to advance.
    """
    out: dict[int, Readings] = {}
    left: list[Job] = []
    groups: dict[tuple, list[Job]] = defaultdict(list)
    for job in jobs:
        groups[_group_key(job)].append(job)
    for group in groups.values():
        first = group[0]
        base_of: dict[int, int] = {}  # id(noise) -> base index
        firsts: list[Job] = []
        for job in group:
            if id(job.noise) not in base_of:
                base_of[id(job.noise)] = len(firsts)
                firsts.append(job)
        with torch.no_grad():
            bases = [_base_run(first.target_model, first.target_ids, job) for job in firsts]
        if any(base is None for base in bases):
            left += group
            continue
        by_start: dict[int, list[tuple[Job, Write, int]]] = defaultdict(list)
        for job in group:
            (w,) = job.all_writes(values.get(job.index))
            by_start[w.position].append((job, w, base_of[id(job.noise)]))
        for start, rows in by_start.items():
            rows.sort(key=lambda r: r[1].layer)
            out.update(_run_start(first, start, rows, bases, budget, forward, readings, progress))
    return out, left


def _run_start(first: Job, start: int, rows: list[tuple[Job, Write, int]], bases: list, budget: BatchBudget,
               forward: Callable, readings: Callable, progress) -> dict[int, Readings]:
    """The rows that write at position ``start`` (each on its base run), sorted by their write layer."""
    model, ids, knockout = first.target_model, first.target_ids, first.knockout
    keep = len(ids) - first.readout_position
    n_suffix = len(ids) - start
    element = torch.finfo(model.dtype).bits // 8
    row_bytes = kv_bytes_per_token(model) * len(ids) + n_suffix * model.hidden_size * element * 16 \
        + model.vocab_size * 8
    size = budget.rows_per_batch(n_suffix, row_bytes)

    def run(part: Sequence[tuple[Job, Write, int]]) -> list[Readings]:
        base_index = torch.tensor([b for _, _, b in part])
        layers = [w.layer for _, w, _ in part]
        landing: dict[int, list[int]] = defaultdict(list)
        for r, layer in enumerate(layers):
            landing[layer].append(r)
        states = {layer: torch.stack([bases[part[r][2]][1][layer][start:] for r in rs])
                  for layer, rs in landing.items()}
        vecs = torch.stack([
            (bases[b][1][w.layer][start] + w.value.to(bases[b][1][w.layer].dtype)) if w.add else w.value
            for _, w, b in part])
        n = len(part)
        input_ids = torch.tensor(list(ids[start:]))[None].expand(n, -1).contiguous()
        positions = torch.arange(start, len(ids))[None].expand(n, -1).contiguous()
        mask = torch.ones((n, len(ids)), dtype=torch.long)
        cache = _per_row_prefix([c for c, _ in bases], start, base_index) if start > 0 else None
        pre = {} if knockout is None else {
            layer: [knockout_pre_hook(None, knockout.query, knockout.keys, offset=start)]
            for layer in knockout.layers}
        with torch.no_grad(), registered(model, {}, pre), staircase(model.arch.blocks, layers, states, vecs):
            hidden = forward(model, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=cache is not None, logits_to_keep=keep)
        return readings(model, hidden[:, -keep], [job for job, _, _ in part])

    out: dict[int, Readings] = {}
    for part in chunks(rows, size):
        out.update(zip([job.index for job, _, _ in part], run_with_backoff(run, part)))
        if progress is not None:
            progress.update(len(part))
    return out
