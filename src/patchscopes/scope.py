"""The paper's notation as types: a source (S, i, M, l), a target (T, i*, f, M*, l*) and a readout.

The readouts (:class:`NextToken`, :class:`Generate`) are defined by the engine, which carries them out, and
re-exported here as part of the notation.

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
from typing import Literal

import torch

from patchscopes.engine.readouts import AnswerProbs, Generate, NextToken, Readout
from patchscopes.errors import PatchscopesError
from patchscopes.mappings import StateMap
from patchscopes.models import LanguageModel
from patchscopes.soft_prompt import SoftPrompt

__all__ = [
    "EMBEDDINGS", "AnswerProbs", "AttentionKnockout", "EmbeddingNoise", "Generate", "NextToken", "Patchscope",
    "Readout", "Source", "Target", "Write", "contains_placeholder", "resolve_position", "token_span",
]

EMBEDDINGS = "embeddings"
"""The layer name of the token embeddings (the input of block 0): ``Target(prompt, layer="embeddings")``."""

Layer = int | Literal["embeddings"]
Site = Literal["block", "mlp", "attn"]
Positions = int | str | tuple[int, ...]


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
    layer: Layer
    position: int | str = -1
    model: LanguageModel | None = field(default=None, repr=False)
    site: Site = "block"


@dataclass(frozen=True)
class Write:
    """A further write into the target run, beside the patch.

    Attributes:
        layer: A block index, or ``"embeddings"`` (the token embeddings, before block 0).
        position: A token index or a substring (its last token).
        value: The vector written; ``None`` writes f(h) again (e.g. SelfIE's several placeholders).
        site: ``"block"`` (the residual stream after the block), or the block's ``"mlp"`` or ``"attn"`` output.
        add: Add the vector to the state (steering) instead of replacing it.
    """

    layer: Layer
    position: int | str
    value: torch.Tensor | None = field(default=None, repr=False)
    site: Site = "block"
    add: bool = False


@dataclass(frozen=True)
class EmbeddingNoise:
    """Gaussian noise added to (or written over) the token embeddings of chosen target tokens (causal
    tracing's corruption).

    Attributes:
        positions: The tokens: a substring (all of its tokens, last occurrence), a token index, or a tuple
            of token indices.
        scale: The noise's standard deviation ν.
        seed: Seed of the draw (``torch.Generator``): the same seed gives the same noise.
        values: The noise itself, ``(n_tokens, d)``, instead of a draw (``scale`` and ``seed`` are unused).
        replace: Write the noise over the embeddings instead of adding it (ROME's ``replace=True``).
    """

    positions: Positions
    scale: float = 1.0
    seed: int = 0
    values: torch.Tensor | None = field(default=None, repr=False)
    replace: bool = False


@dataclass(frozen=True)
class AttentionKnockout:
    """Attention edges cut in every head of ``layers``: from the ``query`` token to each ``keys`` token.

    Attributes:
        layers: The blocks whose attention is masked.
        keys: The key tokens: a substring (all its tokens), a token index, or a tuple of token indices.
        query: The query token (default: the last).
    """

    layers: tuple[int, ...]
    keys: Positions
    query: int | str = -1


@dataclass(frozen=True)
class Target:
    """Where f(h) goes: (T, i*, f, M*, l*).

    Attributes:
        prompt: T, the target prompt: text, a tuple of token ids used as given, or a
            :class:`~patchscopes.soft_prompt.SoftPrompt` (input vectors, with text around them).
        layer: l*, the decoder block whose output is overwritten.
        position: i*, a token index or a substring such as the placeholder ``"x"``.
        mapping: f; ``None`` is the identity. A :class:`~patchscopes.mappings.Affine`, any callable
            ``(n, d) -> (n, d*)``, or a path to a saved affine map.
        model: M*; ``None`` means the source model.
        site: ``"block"`` (default), or the ``"mlp"`` / ``"attn"`` output of block l*.
        add: Add f(h) to the state instead of replacing it.
        writes: Further writes (:class:`Write`), e.g. f(h) at several placeholders or restored states.
        noise: Gaussian noise added to (or written over) the embeddings of some tokens (:class:`EmbeddingNoise`).
        knockout: Attention edges to cut (:class:`AttentionKnockout`).
    """

    prompt: str | tuple[int, ...] | SoftPrompt
    layer: Layer
    position: int | str = -1
    mapping: StateMap | object | None = None
    model: LanguageModel | None = field(default=None, repr=False)
    site: Site = "block"
    add: bool = False
    writes: tuple[Write, ...] = ()
    noise: EmbeddingNoise | None = None
    knockout: AttentionKnockout | None = None




@dataclass(frozen=True)
class Patchscope:
    """A source, a target and a readout: one patch.

    Example:
        >>> scope = Patchscope(
        ...     Source("Amazon's former CEO attended the Oscars", layer=10, position="CEO"),
        ...     Target("cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?", layer=10, position=-1),
        ... )
    """

    source: Source | None
    target: Target
    readout: Readout = NextToken()  # noqa: RUF009 (a frozen dataclass: an immutable default)


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
        return model.token_at_char(prompt, ids, end - 1)
    raise PatchscopesError(f"{what} must be an int or a substring, got {type(position).__name__}")


def token_span(model: LanguageModel, prompt: str | tuple[int, ...], ids: list[int], positions: Positions,
               what: str) -> tuple[int, ...]:
    """The token indices of ``positions``: every token of a substring (its last occurrence), one index, or a
    tuple of indices.

    Raises:
        PatchscopesError: The substring is not in the prompt, or an index is out of range.
    """
    if isinstance(positions, tuple):
        if not positions:
            raise PatchscopesError(f"{what} is empty")
        return tuple(sorted({resolve_position(model, prompt, ids, p, what) for p in positions}))
    if isinstance(positions, str) and positions:
        last = resolve_position(model, prompt, ids, positions, what)
        end = _last_occurrence_end(prompt, positions)  # found, or resolve_position raised
        first = model.token_at_char(prompt, ids, end - len(positions.lstrip()))  # the first non-space character
        return tuple(range(min(first, last), last + 1))
    return (resolve_position(model, prompt, ids, positions, what),)


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


def _short(prompt: str | tuple[int, ...], width: int = 40) -> str:
    if not isinstance(prompt, str):
        return f"<{len(prompt)} token ids>"
    return repr(prompt if len(prompt) <= width else prompt[: width - 3] + "...")
