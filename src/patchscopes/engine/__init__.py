"""The engine: everything that turns resolved jobs into forward passes.

One patch, step by step (the module that holds each step):

- :mod:`~patchscopes.engine.jobs`: :class:`Job`, a model, its tokens, a list of interventions and a readout;
  :mod:`~patchscopes.engine.interventions`: the intervention types (:class:`Read`, :class:`Write`,
  :class:`Noise`, :class:`Knockout`, :class:`SoftInput`); :mod:`~patchscopes.engine.readouts`: what is read
  (:class:`NextToken`, :class:`Generate`) and what a run showed (:class:`Readings`).
- :mod:`~patchscopes.engine.batched`: the fast engine: sources captured in one early-stopped forward, mappings
  applied once, the jobs grouped by :mod:`~patchscopes.engine.planner` (logit lens, staircase, rows) and run
  under a :class:`BatchBudget` (:mod:`~patchscopes.engine.budget`) with shared prefixes
  (:mod:`~patchscopes.engine.prefix`, shared-prefix attention), rows that skip blocks
  (:mod:`~patchscopes.engine.layer_skipping`) and top-k over vocabulary slices
  (:mod:`~patchscopes.engine.unembedding`).
- :mod:`~patchscopes.engine.reference`: the plain engine, one hooked forward per job, the ground truth.
- Shared by both: :mod:`~patchscopes.engine.hooks` (the one hook mechanism) and
  :mod:`~patchscopes.engine.decode` (the one decode loop), which :func:`greedy_generate` uses too.
- :func:`capture_states` (:mod:`~patchscopes.engine.capture`): the one way code outside the engine reads hidden
  states; :mod:`~patchscopes.engine.gradients`: differentiable patched runs for fitted lenses.

Imports: :mod:`patchscopes.models` and :mod:`patchscopes.errors` only. Jobs are built from patchscopes by the
root package (:mod:`patchscopes.resolve`), so the engine never sees the user-facing types.
"""

from typing import Literal, get_args

from patchscopes.engine.batched import run_batched
from patchscopes.engine.budget import BatchBudget, budget_for_memory, device_budget
from patchscopes.engine.capture import capture_states
from patchscopes.engine.generation import greedy_generate, greedy_token_ids
from patchscopes.engine.interventions import EMBEDDINGS, Knockout, Noise, Read, SoftInput, Write
from patchscopes.engine.jobs import Job, job_models
from patchscopes.engine.readouts import AnswerProbs, Generate, NextToken, Readings, Readout
from patchscopes.engine.reference import run_reference
from patchscopes.errors import PatchscopesError

Engine = Literal["batched", "reference"]
ENGINES: tuple[str, ...] = get_args(Engine)
"""The engines' names: ``"batched"`` (the fast path) and ``"reference"`` (one plain forward per job)."""


def check_engine(engine: str) -> None:
    """Refuse an unknown engine name."""
    if engine not in ENGINES:
        raise PatchscopesError(f"unknown engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")


__all__ = [
    "EMBEDDINGS", "ENGINES", "AnswerProbs", "BatchBudget", "Engine", "Generate", "Job", "Knockout", "NextToken",
    "Noise", "Read", "Readings", "Readout", "SoftInput", "Write", "budget_for_memory", "capture_states",
    "check_engine", "device_budget", "greedy_generate", "greedy_token_ids", "job_models", "run_batched",
    "run_reference",
]
