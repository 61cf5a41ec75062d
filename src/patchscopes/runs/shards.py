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

    keys = [job_key(job, describe) for job in jobs]
    return [Shard(k, start, min(start + size, len(jobs)), _digest([engine, keys[start: start + size]]))
            for k, start in enumerate(starts)]


def job_key(job: Job, describe=canonical) -> list:
    """What a job computes, JSON-ready: its source, target tokens, interventions, mapping and readout (the
    order of 0.2's keys; soft-prompt vectors only where there are some)."""
    src, patch = job.source, job.patch
    further = [w for w in job.writes if w is not patch]
    soft = job.soft_input
    key = [None if src is None else src.model.name, () if src is None else src.tokens,
           -1 if src is None else src.layer, -1 if src is None else src.position, "block" if src is None else src.site,
           job.model.name, job.tokens, -1 if patch is None else patch.layer, -1 if patch is None else patch.position,
           "block" if patch is None else patch.site, False if patch is None else patch.add,
           describe(job.mapping), describe(job.readout), job.readout_position, job.answer_ids, canonical(further),
           canonical(job.noise), canonical(job.knockout)]
    return key + ([] if soft is None else [canonical((soft.offset, soft.vectors))])


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
