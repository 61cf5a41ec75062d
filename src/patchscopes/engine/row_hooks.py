"""Hooks for batch rows whose jobs carry several writes, embedding noise or attention knockout.

Each row of such a batch runs the target tokens from its group's first changed position on (the suffix);
the tokens before it are unchanged by every intervention and come from the shared prefix cache.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from patchscopes.engine.interventions import check_knockout_support, knockout_pre_hook, noise_write, write_hook
from patchscopes.engine.jobs import Job


def suffix_start(job: Job) -> int:
    """The first target position any intervention of ``job`` changes (tokens before it are unaffected)."""
    positions = [w.position for w in job.all_writes(None)]
    if job.noise is not None:
        positions += list(job.noise.positions)
    if job.knockout is not None:
        positions.append(job.knockout.query)
    return min(positions) if positions else len(job.target_ids) - 1


def row_hooks(part: Sequence[Job], values: dict[int, torch.Tensor], offset: int, once: bool
              ) -> tuple[dict[tuple[int, str], list[Callable]], dict[int, list[Callable]]]:
    """Forward hooks (per ``(layer, site)``) and attention pre-hooks (per layer) carrying out every row's
    noise, writes and knockout, for a forward over the tokens from ``offset`` on.

    Writes at the same site are gathered into one hook per order of application (noise, then the patch,
    then the job's further writes), so each row sees them in the order the reference engine applies them.
    """
    layered: dict[tuple[int, str, int], list[tuple[int, int, torch.Tensor, bool]]] = defaultdict(list)
    knock: dict[tuple[int, int, tuple[int, ...]], list[int]] = defaultdict(list)
    for row, job in enumerate(part):
        writes = noise_write(job.noise) if job.noise is not None else []
        writes += job.all_writes(values.get(job.index))
        for order, w in enumerate(writes):
            layered[(w.layer, w.site, order)].append((row, w.position, w.value, w.add))
        if job.knockout is not None:
            check_knockout_support(job.target_model)
            for layer in job.knockout.layers:
                knock[(layer, job.knockout.query, job.knockout.keys)].append(row)
    plan: dict[tuple[int, str], list[Callable]] = defaultdict(list)
    for (layer, site, _), entries in sorted(layered.items(), key=lambda kv: kv[0][2]):
        rows = [e[0] for e in entries]
        cols = [e[1] for e in entries]
        vals = torch.stack([e[2].detach() for e in entries])
        plan[(layer, site)].append(write_hook(rows, cols, vals, [e[3] for e in entries], offset=offset, once=once))
    pre: dict[int, list[Callable]] = defaultdict(list)
    for (layer, query, keys), rows in knock.items():
        pre[layer].append(knockout_pre_hook(rows, query, keys, offset=offset, once=once))
    return plan, pre
