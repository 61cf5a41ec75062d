"""What the engine can read out of a target run, and what it returns.

:class:`NextToken` and :class:`Generate` say what to read; :class:`Readings` holds what one run showed;
:func:`next_token_readings` turns final-normed states into readings. The root package re-exports the readouts
as part of the paper's notation (:mod:`patchscopes.scope`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field, fields

import torch

from patchscopes.engine.unembedding import logits_of, top_k_logprobs
from patchscopes.errors import PatchscopesError, check_integer, check_real
from patchscopes.models import LanguageModel


@dataclass(frozen=True)
class NextToken:
    """Read the next-token distribution of the patched target run.

    Attributes:
        top_k: How many of the most likely tokens to keep.
        full_logits: Also keep the full vector of logits (memory grows with the vocabulary).
        position: The target position whose next-token distribution is read (default: the last token).
            It must not come before the patch position, which could not affect it.
    """

    top_k: int = 10
    full_logits: bool = False
    position: int = -1


@dataclass(frozen=True)
class Generate:
    """Generate text from the patched target run.

    The patch is applied once, while the target prompt is read (prefill); later tokens see it only
    through the key/value cache.

    Attributes:
        max_new_tokens: The most tokens to generate.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        sample_top_k: Sample among the k most likely tokens only (0: no limit); ``top_k=`` is 0.2's name of it
            (deprecated: ``top_k`` is how many tokens :class:`NextToken` keeps, here ``top_tokens``).
        top_p: Nucleus sampling mass (1.0: no limit).
        stop: Strings that end generation; the text is cut before the first one.
        seed: Seed of the sampler, for reproducible samples.
        top_tokens: How many tokens of the first generated position's distribution to report.
        relevancy: Also score each generated token by SelfIE's relevancy: its probability with the patch
            minus without, teacher-forced; signed (SelfIE's code reports the absolute value).
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    sample_top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    top_tokens: int = 10
    relevancy: bool = False
    top_k: InitVar[int | None] = None

    def __post_init__(self, top_k: int | None) -> None:
        if top_k is not None:
            warnings.warn("Generate(top_k=...) is deprecated: use sample_top_k", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "sample_top_k", top_k)
        for name in ("max_new_tokens", "sample_top_k", "seed", "top_tokens"):  # types first: the checks below compare
            check_integer(getattr(self, name), name)
        for name in ("temperature", "top_p"):
            check_real(getattr(self, name), name)
        # One string or a list of stops is accepted too; kept as a tuple so the readout stays hashable.
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise PatchscopesError(f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        if self.do_sample and not self.temperature > 0:
            raise PatchscopesError(f"the sampling temperature must be positive, got {self.temperature}",
                                   hint="use do_sample=False for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise PatchscopesError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.sample_top_k < 0:
            raise PatchscopesError(f"sample_top_k must be 0 (no limit) or positive, got {self.sample_top_k}")


@dataclass(frozen=True)
class AnswerProbs(NextToken):
    """A next-token readout that also reports the probability of given answers.

    Each answer counts by its first token as it continues the target prompt (the text of the prompt
    followed by the answer is tokenized, and the first token after the prompt's own tokens is read; for a
    prompt given as token ids, the answer is tokenized alone, without special tokens). A multi-token
    answer is thus scored by its first token, the convention of causal tracing (Meng et al. 2022). An
    answer given as an ``int`` is a token id, used as is.

    Attributes:
        answers: The answer strings (or token ids).
    """

    answers: tuple[str | int, ...] = ()

    def __post_init__(self) -> None:
        answers = (self.answers,) if isinstance(self.answers, (str, int)) else tuple(self.answers)
        for answer in answers:
            if isinstance(answer, str) and not answer.strip():
                raise PatchscopesError("an answer is empty", hint="give the answer's text, e.g. ' Paris'")
        if not answers:
            raise PatchscopesError("AnswerProbs needs at least one answer")
        object.__setattr__(self, "answers", answers)


Readout = NextToken | Generate


@dataclass
class Readings:
    """What one target run showed: the top-k next tokens and, for generation, the text."""

    top_tokens: list[str]
    top_token_ids: list[int]
    top_probs: list[float]
    generated_text: str | None = None
    generated_token_ids: list[int] | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)
    answer_probs: list[float] | None = None  # AnswerProbs: p(first token of each answer)
    relevancy: list[float] | None = None  # Generate(relevancy=True): one score per generated token


READING_FIELDS = tuple(f.name for f in fields(Readings) if f.name != "logits")
"""The fields of :class:`Readings` that go into records and shard files (the full logits go apart, as tensors)."""


def top_readings(model: LanguageModel, logits: torch.Tensor, k: int, keep_full: bool) -> list[Readings]:
    """Top-k tokens and probabilities of each row of ``logits`` ``(n, vocab)``."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    probs, ids = values.exp().cpu().tolist(), indices.cpu().tolist()
    return [Readings(top_tokens=model.token_labels(ids[row]), top_token_ids=ids[row], top_probs=probs[row],
                     logits=logits[row].float().cpu().clone() if keep_full else None)
            for row in range(logits.shape[0])]


def next_token_readings(model: LanguageModel, hidden: torch.Tensor, readouts: Sequence[NextToken],
                        answers: Sequence[Sequence[int]]) -> list[Readings]:
    """The readings of final-normed hidden states ``(rows, d)``, row ``r`` read by ``readouts[r]`` (with the
    probabilities of ``answers[r]``).

    The top-k is read slice by slice of the vocabulary (no full logit matrix), unless a row asks for the full
    logits or for answers.
    """
    k_max = max(r.top_k for r in readouts)
    if not any(answers) and not any(r.full_logits for r in readouts):
        logprobs, ids = top_k_logprobs(model, hidden, k_max)
        probs, ids = logprobs.exp().cpu().tolist(), ids.cpu().tolist()
        return [Readings(top_tokens=model.token_labels(ids[row][: r.top_k]), top_token_ids=ids[row][: r.top_k],
                         top_probs=probs[row][: r.top_k]) for row, r in enumerate(readouts)]
    out = []
    for start in range(0, hidden.shape[0], 64):  # full logits: a few rows at a time
        logits = logits_of(model, hidden[start: start + 64])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, reading in enumerate(top_readings(model, logits, k_max, True), start):
            r = readouts[row]
            reading.top_tokens, reading.top_token_ids, reading.top_probs = (
                reading.top_tokens[: r.top_k], reading.top_token_ids[: r.top_k], reading.top_probs[: r.top_k])
            if not r.full_logits:
                reading.logits = None
            if answers[row]:
                reading.answer_probs = [float(logprobs[row - start, i].exp()) for i in answers[row]]
            out.append(reading)
    return out
