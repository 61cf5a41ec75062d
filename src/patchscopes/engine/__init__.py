"""The engine: everything that turns resolved jobs into forward passes.

- :mod:`~patchscopes.engine.readouts`: what can be read from a target run (:class:`NextToken`,
  :class:`Generate`) and what a run showed (:class:`Readings`).
- :mod:`~patchscopes.engine.jobs`: :class:`Job`, one patch with everything resolved.
- :mod:`~patchscopes.engine.batched`: the fast engine (sources captured in one early-stopped forward, shared
  target prefixes, many patch layers per forward, vocabulary slices); :mod:`~patchscopes.engine.reference`: the
  plain one, one hooked forward per patch, the ground truth the tests compare against.
- :mod:`~patchscopes.engine.interventions`: what a target run may carry beside the patch (:class:`Write` at
  blocks, MLP or attention outputs or the embeddings, embedding :class:`Noise`, attention :class:`Knockout`)
  and the hooks both engines use for them; ``row_hooks`` (rows with any of them, batched), ``shared_base``
  (causal tracing's restores on a shared corrupted run) and ``relevancy`` (SelfIE's score).
- Helpers of the batched engine: ``batching`` (micro-batch budgets), ``prefix`` (shared key/value caches),
  ``layer_skipping`` (rows that skip the blocks below their l*), ``unembedding`` (top-k over vocabulary slices),
  ``hooks``, ``padding``, ``generation`` (batched greedy generation without patches).
- :mod:`~patchscopes.engine.capture`: :func:`capture_states`, the one way code outside the engine reads hidden
  states.

Imports: :mod:`patchscopes.models` and :mod:`patchscopes.errors` only. Jobs are built from patchscopes by the
root package (:mod:`patchscopes.resolve`), so the engine never sees the user-facing types.
"""

from patchscopes.engine.batched import run_batched
from patchscopes.engine.batching import BatchBudget, budget_for_memory, device_budget
from patchscopes.engine.capture import capture_states
from patchscopes.engine.generation import greedy_generate, greedy_token_ids
from patchscopes.engine.interventions import EMBEDDINGS, Knockout, Noise, Write
from patchscopes.engine.jobs import Job, job_models
from patchscopes.engine.readouts import AnswerProbs, Generate, NextToken, Readings, Readout
from patchscopes.engine.reference import run_reference, target_run

__all__ = [
    "EMBEDDINGS",
    "AnswerProbs",
    "BatchBudget",
    "Generate",
    "Job",
    "Knockout",
    "NextToken",
    "Noise",
    "Readings",
    "Readout",
    "Write",
    "budget_for_memory",
    "capture_states",
    "device_budget",
    "greedy_generate",
    "greedy_token_ids",
    "job_models",
    "run_batched",
    "run_reference",
    "target_run",
]
