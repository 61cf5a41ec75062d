"""Jobs, the engine's unit of work: a model, its tokens, the interventions on its run and what is read from it.

:func:`patchscopes.resolve.resolve_jobs` builds them from patchscopes; the engines return one
:class:`~patchscopes.engine.readouts.Readings` per job, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from patchscopes.engine.interventions import Intervention, Knockout, Noise, Read, SoftInput, Write
from patchscopes.engine.readouts import Readout
from patchscopes.models import LanguageModel


@dataclass(eq=False)
class Job:
    """One run of a model with its interventions, and what to read from it.

    A patch is a :class:`~patchscopes.engine.interventions.Read` ``source`` (h), a ``mapping`` f, and the
    writes without a value, which write f(h). A job without a source runs its other interventions only (a
    baseline, a corrupted run, a soft prompt alone).

    Attributes:
        index: The job's place in the run (sampling seeds depend on it).
        model: The model run, M*.
        tokens: Its token ids (placeholders where a :class:`SoftInput` stands).
        interventions: What is done to the run, in the order it applies.
        readout: What is read (``NextToken``, ``AnswerProbs``, ``Generate``).
        readout_position: The position whose next-token distribution is read (next-token readouts).
        source: Where h is read, or ``None``.
        mapping: f, applied to h.
        answer_ids: The answers' token ids an ``AnswerProbs`` readout reports.
        source_text, target_text: The prompts as text where they were given as token ids (for results).
    """

    index: int
    model: LanguageModel
    tokens: tuple[int, ...]
    interventions: tuple[Intervention, ...]
    readout: Readout
    readout_position: int | None = None
    source: Read | None = None
    mapping: Callable[[torch.Tensor], torch.Tensor] | None = None
    answer_ids: tuple[int, ...] = ()
    source_text: str | None = None
    target_text: str | None = None

    @property
    def writes(self) -> list[Write]:
        """The job's writes, in order (the patch first, where there is one)."""
        return [i for i in self.interventions if isinstance(i, Write)]

    @property
    def patch(self) -> Write | None:
        """The write of f(h) (the first write without a value), or ``None`` for a job without a source."""
        if self.source is None:
            return None
        return next((w for w in self.writes if w.value is None), None)

    @property
    def noise(self) -> Noise | None:
        return next((i for i in self.interventions if isinstance(i, Noise)), None)

    @property
    def knockout(self) -> Knockout | None:
        return next((i for i in self.interventions if isinstance(i, Knockout)), None)

    @property
    def soft_input(self) -> SoftInput | None:
        return next((i for i in self.interventions if isinstance(i, SoftInput)), None)

    def filled_writes(self, value: torch.Tensor | None) -> list[Write]:
        """The job's writes with ``value`` (f(h)) where they have none."""
        return [w if w.value is not None else Write(w.layer, w.position, value, w.site, w.add) for w in self.writes]


def job_models(jobs: Sequence[Job]) -> list[LanguageModel]:
    """The distinct models the jobs run (sources and targets), in order of first use."""
    found = (m for job in jobs for m in (job.source.model if job.source else None, job.model) if m is not None)
    return list(dict.fromkeys(found))
