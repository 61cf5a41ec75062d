"""The paper's notation as types: a source (S, i, M, l), a target (T, i*, f, M*, l*) and a readout.

A :class:`Patchscope` takes the hidden state h of ``source.model`` at ``source.layer`` and
``source.position`` while it reads ``source.prompt``, maps it through ``target.mapping`` and writes f(h)
over the output of block ``target.layer`` at ``target.position`` while ``target.model`` reads
``target.prompt``. The readout says what is read from that patched run.

Layer l is the output of decoder block l (Hugging Face ``hidden_states[l + 1]``, before the final norm);
positions index the model's own tokens, special tokens included. Negative layers and positions count from
the end. A position may be a string: the last token of its last occurrence in the prompt.

A prompt is text, or a tuple of token ids used exactly as given (no special tokens are added): this lets a
caller run a document cut at a token boundary without a round trip through text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from patchscopes.errors import PatchscopesError
from patchscopes.mappings import Mapping
from patchscopes.model import LanguageModel


@dataclass(frozen=True)
class Source:
    """Where h comes from: (S, i, M, l).

    Attributes:
        prompt: S, the source prompt: text, or a tuple of token ids used as given.
        layer: l, the decoder block whose output is read.
        position: i, a token index or a substring (its last token).
        model: M; ``None`` means the model given to :func:`patchscopes.run`.
    """

    prompt: str | tuple[int, ...]
    layer: int
    position: int | str = -1
    model: LanguageModel | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Target:
    """Where f(h) goes: (T, i*, f, M*, l*).

    Attributes:
        prompt: T, the target prompt: text, or a tuple of token ids used as given.
        layer: l*, the decoder block whose output is overwritten.
        position: i*, a token index or a substring such as the placeholder ``"x"``.
        mapping: f; ``None`` is the identity. A :class:`~patchscopes.mappings.Affine`, any callable
            ``(n, d) -> (n, d*)``, or a path to a saved affine map.
        model: M*; ``None`` means the source model.
    """

    prompt: str | tuple[int, ...]
    layer: int
    position: int | str = -1
    mapping: Mapping | object | None = None
    model: LanguageModel | None = field(default=None, repr=False)


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
        top_k: Sample among the k most likely tokens only (0: no limit).
        top_p: Nucleus sampling mass (1.0: no limit).
        stop: Strings that end generation; the text is cut before the first one.
        seed: Seed of the sampler, for reproducible samples.
        top_tokens: How many tokens of the first generated position's distribution to report.
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    top_tokens: int = 10

    def __post_init__(self) -> None:
        # One string or a list of stops is accepted too; kept as a tuple so the readout stays hashable.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) for s in stop):
            raise PatchscopesError(f"stop strings must be strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        if self.do_sample and not self.temperature > 0:
            raise PatchscopesError(f"the sampling temperature must be positive, got {self.temperature}",
                                   hint="use do_sample=False for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise PatchscopesError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise PatchscopesError(f"top_k must be 0 (no limit) or positive, got {self.top_k}")


Readout = NextToken | Generate


@dataclass(frozen=True)
class Patchscope:
    """A source, a target and a readout: one patch.

    Example:
        >>> scope = Patchscope(
        ...     Source("Amazon's former CEO attended the Oscars", layer=10, position="CEO"),
        ...     Target("cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?", layer=10, position=-1),
        ... )
    """

    source: Source
    target: Target
    readout: Readout = NextToken()


def resolve_position(
    model: LanguageModel, prompt: str | tuple[int, ...], ids: list[int], position: int | str, what: str
) -> int:
    """Resolve ``position`` in ``prompt`` (tokenized as ``ids``) to a non-negative token index.

    Raises:
        PatchscopesError: The index is out of range, or the substring does not occur in the prompt (a
            substring position needs a text prompt).
    """
    n = len(ids)
    if isinstance(position, bool):
        raise PatchscopesError(f"{what} must be an int or a substring, got {position!r}")
    if isinstance(position, int):
        if not -n <= position < n:
            raise PatchscopesError(
                f"{what} {position} is out of range: the prompt {_short(prompt)} has {n} tokens",
                hint=f"use a position in 0..{n - 1}, or -1..-{n} from the end",
            )
        return position % n
    if isinstance(position, str):
        if not position:
            raise PatchscopesError(f"{what} is an empty string")
        if not isinstance(prompt, str):
            raise PatchscopesError(
                f"{what} {position!r} is a substring, but the prompt is given as token ids",
                hint="give a token index for a prompt of token ids",
            )
        end = _last_occurrence_end(prompt, position)
        if end is None:
            raise PatchscopesError(
                f"{what} {position!r} does not occur in the prompt {_short(prompt)}",
                hint="give a substring of the prompt (its last token is used) or a token index",
            )
        return _token_at_char(model, prompt, ids, end - 1)
    raise PatchscopesError(f"{what} must be an int or a substring, got {type(position).__name__}")


def contains_placeholder(prompt: str, placeholder: str) -> bool:
    """Whether ``placeholder`` occurs in ``prompt`` as a whole word (``x`` in ``text`` does not count)."""
    return _last_occurrence_end(prompt, placeholder, whole_word=True) is not None


def _last_occurrence_end(prompt: str, sub: str, *, whole_word: bool = False) -> int | None:
    """End offset of the last occurrence of ``sub``.

    A whole-word occurrence is preferred where ``sub`` starts or ends with a word character; otherwise the
    last plain occurrence is used, unless ``whole_word`` is set.
    """
    left = r"(?<!\w)" if sub[0].isalnum() else ""
    right = r"(?!\w)" if sub[-1].isalnum() else ""
    matches = list(re.finditer(left + re.escape(sub) + right, prompt))
    if not matches:
        if whole_word:
            return None
        idx = prompt.rfind(sub)
        return None if idx < 0 else idx + len(sub)
    return matches[-1].end()


def _token_at_char(model: LanguageModel, prompt: str, ids: list[int], char: int) -> int:
    """The index of the token that covers character ``char`` of ``prompt``."""
    tok = model.tokenizer
    try:
        enc = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    if offsets is not None and len(offsets) == len(ids):
        best = None
        for index, (start, stop) in enumerate(offsets):
            if start == stop:  # special tokens
                continue
            if start <= char < stop or (best is None and start > char):
                best = index
        if best is not None:
            return best
    # Without offsets: the first prefix of tokens whose decoded text covers the character.
    for index in range(len(ids)):
        if len(tok.decode(ids[: index + 1], skip_special_tokens=True)) > char:
            return index
    return len(ids) - 1


def _short(prompt: str | tuple[int, ...], width: int = 40) -> str:
    if not isinstance(prompt, str):
        return f"<{len(prompt)} token ids>"
    return repr(prompt if len(prompt) <= width else prompt[: width - 3] + "...")
