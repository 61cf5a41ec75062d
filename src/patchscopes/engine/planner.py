"""The planner: which jobs of a batched run share what, decided in one place.

A job's run splits into what its group shares and what is its own. Tokens before the first position a job's
writes change (its *start*) are those of its *base run* (the prompt with its noise, soft input and knockout, no
write); blocks below its *entry* (the first block a write reaches) are the base run's too. So:

- **lens**: a next-token job whose only write replaces the last block's output at the read position needs no
  forward at all: the final norm and unembedding are applied to the written vector (the logit lens).
- **staircase**: next-token jobs on one prompt (one knockout, soft input and read position; any number of noise
  samples, each a base run of its own) run each base once, then every job only over the tokens from its start,
  through the blocks from its entry, many entries in one forward
  (:mod:`~patchscopes.engine.layer_skipping`), the prefix before the start shared.
- **rows**: every other job (generation, relevancy, models where blocks cannot be skipped) runs all blocks over
  the tokens from its start, its interventions hooked, the prefix shared by the rows of one base and start. A
  job alone on its prompt runs whole, batched with other such jobs of its length and readout.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from patchscopes.engine.jobs import Job
from patchscopes.engine.readouts import Generate, NextToken

LENS, STAIRCASE, ROWS = "lens", "staircase", "rows"


@dataclass(frozen=True)
class Continuation:
    """An internal readout: the probability of each token from ``first + 1`` on given the ones before it
    (teacher forcing; SelfIE's relevancy)."""

    first: int


@dataclass(eq=False)
class Group:
    """Jobs that run together.

    Attributes:
        strategy: :data:`LENS`, :data:`STAIRCASE` or :data:`ROWS`.
        jobs: The jobs, in the order they were given.
        start: For :data:`ROWS`: the first token the rows' forward runs (the tokens before it are a shared prefix).
    """

    strategy: str
    jobs: list[Job] = field(default_factory=list)
    start: int = 0


def first_change(job: Job) -> int:
    """The first position a job's writes change; without writes, the position read (or the last token)."""
    positions = [w.position for w in job.writes]
    if positions:
        return min(positions)
    if isinstance(job.readout, NextToken):
        return job.readout_position
    if isinstance(job.readout, Continuation):
        return job.readout.first
    return len(job.tokens) - 1


def entry_layer(job: Job) -> int:
    """The first block a job's writes reach (the number of blocks where it has none)."""
    return min((w.entry for w in job.writes), default=job.model.num_layers)


def base_key(job: Job) -> tuple:
    """What a job's base run is made of: its model, tokens, noise, soft input and knockout."""
    soft = job.soft_input
    return (job.model, job.tokens, id(job.noise), None if soft is None else soft.key(), job.knockout)


def is_lens(job: Job) -> bool:
    """Whether ``job`` is a next-token read of a vector written over the last block's output where it is read."""
    writes = job.writes
    if not isinstance(job.readout, NextToken) or len(writes) != 1:
        return False
    w = writes[0]
    return (w.site == "block" and not w.add and w.layer == job.model.num_layers - 1
            and w.position == job.readout_position)


def plan(jobs: Sequence[Job], *, skips_blocks) -> list[Group]:
    """Group ``jobs``; ``skips_blocks(model)`` says whether a model's rows may skip blocks (staircase)."""
    groups: list[Group] = []
    lens: dict[object, Group] = {}
    families: dict[tuple, list[Job]] = defaultdict(list)
    bases: dict[tuple, list[Job]] = defaultdict(list)
    for job in jobs:
        if is_lens(job):
            lens.setdefault(job.model, Group(LENS)).jobs.append(job)
        elif isinstance(job.readout, NextToken) and skips_blocks(job.model):
            soft = job.soft_input
            families[(job.model, job.tokens, None if soft is None else soft.key(), job.knockout,
                      job.readout_position)].append(job)
        else:
            bases[(*base_key(job), _readout_key(job))].append(job)
    groups += lens.values()
    for family in families.values():
        if len(family) > 1:
            groups.append(Group(STAIRCASE, family))
        else:
            bases[(*base_key(family[0]), _readout_key(family[0]))].append(family[0])
    loose: dict[tuple, Group] = {}
    for members in bases.values():
        if len(members) == 1:  # alone on its prompt: run whole, beside others of its length
            job = members[0]
            loose.setdefault((job.model, len(job.tokens), _readout_key(job)), Group(ROWS)).jobs.append(job)
            continue
        groups += by_start(members)
    return groups + list(loose.values())


def by_start(jobs: Sequence[Job]) -> list[Group]:
    """``jobs`` of one base run as :data:`ROWS` groups, one per first changed position."""
    groups: dict[int, Group] = {}
    for job in jobs:
        start = first_change(job)
        groups.setdefault(start, Group(ROWS, start=start)).jobs.append(job)
    return list(groups.values())


def _readout_key(job: Job) -> tuple:
    if isinstance(job.readout, Generate):
        return ("generate", job.readout)
    if isinstance(job.readout, Continuation):
        return ("continuation", job.readout.first)
    return ("next",)
