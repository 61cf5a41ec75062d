"""Shards: consecutive pieces of a run's jobs, each keyed by what it computes, and readings as records.

A shard's key is a fingerprint of its jobs (models, token ids, layers, positions, mapping, readout) and the
engine, so one run directory can hold the shards of several calls of :func:`patchscopes.run` (an experiment
makes one per relation or method) and a shard is never read back for other work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine import Job, Readings
from patchscopes.runs.fingerprint import canonical, fingerprint

DEFAULT_SHARD_SIZE = 256
"""Patches per shard when a run directory or a parallel executor is used: small enough to lose little to a
kill, large enough that a shard still batches well."""


@dataclass(frozen=True)
class Shard:
    """Jobs ``start:stop`` of a run, and the fingerprint of what they compute."""

    index: int
    start: int
    stop: int
    key: str


def plan_shards(jobs: Sequence[Job], shard_size: int | None, engine: str) -> list[Shard]:
    """Cut ``jobs`` into consecutive shards of at most ``shard_size`` (``None``: one shard)."""
    size = shard_size or max(1, len(jobs))
    mappings: dict[int, object] = {}
    keys = []
    for job in jobs:
        if id(job.mapping) not in mappings:
            mappings[id(job.mapping)] = canonical(job.mapping)
        keys.append([
            job.source_model.name, job.source_ids, job.source_layer, job.source_position,
            job.target_model.name, job.target_ids, job.target_layer, job.target_position,
            mappings[id(job.mapping)], canonical(job.readout), job.readout_position,
        ])
    return [Shard(k, start, min(start + size, len(jobs)), fingerprint([engine, keys[start: start + size]]))
            for k, start in enumerate(range(0, len(jobs), size))]


def readings_to_records(readings: Sequence[Readings]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """JSON records of readings, and their full logits (where kept) as tensors named by row."""
    records, tensors = [], {}
    for row, r in enumerate(readings):
        records.append({"top_tokens": r.top_tokens, "top_token_ids": r.top_token_ids, "top_probs": r.top_probs,
                        "generated_text": r.generated_text, "generated_token_ids": r.generated_token_ids})
        if r.logits is not None:
            tensors[f"logits.{row}"] = r.logits
    return records, tensors


def records_to_readings(records: Sequence[dict], tensors: dict[str, torch.Tensor]) -> list[Readings]:
    """The inverse of :func:`readings_to_records`."""
    return [Readings(top_tokens=r["top_tokens"], top_token_ids=r["top_token_ids"], top_probs=r["top_probs"],
                     generated_text=r["generated_text"], generated_token_ids=r["generated_token_ids"],
                     logits=tensors.get(f"logits.{row}"))
            for row, r in enumerate(records)]
