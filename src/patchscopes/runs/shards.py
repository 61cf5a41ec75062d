"""Shards: consecutive pieces of a run's jobs, each keyed by what it computes, and readings as records.

A shard's key is a fingerprint of its jobs (models, token ids, soft-prompt vectors, layers, positions, mapping,
readout) and the engine, so one run directory can hold the shards of several calls of :func:`patchscopes.run`
(an experiment makes one per relation or method) and a shard is never read back for other work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine import Job, Readings
from patchscopes.engine.readouts import READING_FIELDS
from patchscopes.runs.fingerprint import canonical

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


def plan_shards(jobs: Sequence[Job], shard_size: int | None, engine: str, *, keyed: bool = True) -> list[Shard]:
    """Cut ``jobs`` into consecutive shards of at most ``shard_size`` (``None``: one shard).

    Args:
        jobs: The resolved jobs.
        shard_size: The most jobs per shard.
        engine: The engine (part of the keys).
        keyed: Fingerprint each shard's jobs (only a run directory needs the keys; they are ``""`` otherwise).
    """
    size = shard_size or max(1, len(jobs))
    starts = range(0, len(jobs), size)
    if not keyed:
        return [Shard(k, start, min(start + size, len(jobs)), "") for k, start in enumerate(starts)]
    described: dict[int, object] = {}  # canonical forms of mappings and readouts, computed once each

    def describe(value: object) -> object:
        if id(value) not in described:
            described[id(value)] = canonical(value)
        return described[id(value)]

    keys = [[None if job.source_model is None else job.source_model.name, job.source_ids, job.source_layer,
             job.source_position, job.source_site, job.target_model.name, job.target_ids, job.target_layer,
             job.target_position, job.target_site, job.add, describe(job.mapping), describe(job.readout),
             job.readout_position, job.answer_ids, canonical(job.writes), canonical(job.noise),
             canonical(job.knockout)] + ([] if job.target_embeds is None else [canonical(job.target_embeds)])
            for job in jobs]  # soft-prompt vectors only where there are some: the other keys stay as they were
    return [Shard(k, start, min(start + size, len(jobs)), _digest([engine, keys[start: start + size]]))
            for k, start in enumerate(starts)]


def _digest(value: object) -> str:
    """SHA-256 of JSON-ready ``value`` (already canonical: no need to walk it again)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def readings_to_records(readings: Sequence[Readings]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """JSON records of readings, and their full logits (where kept) as tensors named by row."""
    records, tensors = [], {}
    for row, r in enumerate(readings):
        records.append({name: getattr(r, name) for name in READING_FIELDS})
        if r.logits is not None:
            tensors[f"logits.{row}"] = r.logits
    return records, tensors


def records_to_readings(records: Sequence[dict], tensors: dict[str, torch.Tensor]) -> list[Readings]:
    """The inverse of :func:`readings_to_records`."""
    return [Readings(top_tokens=r["top_tokens"], top_token_ids=r["top_token_ids"], top_probs=r["top_probs"],
                     generated_text=r["generated_text"], generated_token_ids=r["generated_token_ids"],
                     logits=tensors.get(f"logits.{row}"), answer_probs=r.get("answer_probs"),
                     relevancy=r.get("relevancy"))
            for row, r in enumerate(records)]
