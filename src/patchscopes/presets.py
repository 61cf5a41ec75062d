"""Presets: named patchscope configurations from the paper.

A :class:`Preset` builds the target of a patch from its source: the target prompt, position and layer
(``"same"`` as the source's, ``"last"``, or a number) and the readout, and a one-line ``description``. The
five presets:

- :data:`LOGIT_LENS`: l* = L-1 at the source's own position, read through the final norm and unembedding.
- :data:`TOKEN_IDENTITY`: the few-shot identity prompt of the paper's code, patched at its last position,
  l* = l, next-token readout.
- :data:`ENTITY_DESCRIPTION`: the paper's few-shot description prompt ending in the placeholder ``x``,
  l* = l, generation.
- :data:`SELFIE`: SelfIE (Chen, Vondrick and Mao 2024): the interpretation prompt "[INST] _ _ _ _ _ [/INST]
  Sure, I will summarize the message:" (in the model's chat template where it has one), h written at each of
  the five placeholders at a fixed layer, greedy generation, and the relevancy score of every generated
  token (:mod:`patchscopes.engine.relevancy`).
- :data:`SELF_EXPLANATION`: self-explanation (Kharlapenko, Nanda, Conmy et al. 2024): 'What is the meaning of
  the word "X"?' answered 'The meaning of the word "X" is "' (in the chat template where the model has one), h
  written at each X at l* = l, generation. :func:`patchscopes.describe_vectors` writes directions there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.scope import (
    Generate,
    NextToken,
    Patchscope,
    Readout,
    Source,
    Target,
    Write,
    contains_placeholder,
)

TOKEN_IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
ENTITY_DESCRIPTION_PROMPT = (
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean "
    "multinational major appliance and consumer electronics corporation, x"
)

TargetLayer = int | Literal["same", "last"]


@dataclass(frozen=True)
class Preset:
    """A recipe for the target of a patch, given its source.

    Attributes:
        name: The preset's name (``logit-lens``, ``token-identity``, ``description``...).
        target_prompt: T; ``None`` means the source prompt itself (T = S).
        target_position: i*; ``None`` means the source position (with T = S), else an index or substring.
        target_layer: l*: ``"same"`` (l* = l), ``"last"`` (l* = L*-1) or a layer index.
        readout: What to read. A :class:`NextToken` reads at the target's last token, except when the
            target prompt is the source prompt (logit lens), where it reads at i*.
        placeholder: A string the target prompt must contain (the patch goes on its last token).
        separator: What separates a name from its description in a few-shot prompt (``":"`` in
            ``"Syria: Country in the Middle East, x"``): the model's continuation of ``x`` starts with it,
            and :meth:`clean` strips it. ``None``: nothing to strip.
        prompt_builder: Builds the target prompt for a model, as token ids with the positions to write
            (f(h) goes to each); overrides ``target_prompt`` and ``target_position`` (SelfIE).
        description: One line saying what the preset reads (the explorer shows it under the scope).
    """

    name: str
    target_prompt: str | None
    target_position: int | str | None
    target_layer: TargetLayer
    readout: Readout
    placeholder: str | None = None
    separator: str | None = None
    prompt_builder: Callable[[LanguageModel], tuple[tuple[int, ...], tuple[int, ...]]] | None = None
    description: str = ""

    def clean(self, text: str) -> str:
        """A generated continuation without the separator it starts with (``": chemist"`` → ``"chemist"``),
        and without surrounding spaces; unchanged text when the preset has no separator.

        Example:
            >>> ENTITY_DESCRIPTION.clean(": Polish-French physicist and chemist")
            'Polish-French physicist and chemist'
        """
        if not self.separator:
            return text
        stripped = text.lstrip()
        if stripped.startswith(self.separator):
            stripped = stripped[len(self.separator):]
        return stripped.strip()

    def with_options(
        self,
        *,
        target_prompt: str | None = None,
        target_layer: TargetLayer | None = None,
        readout: Readout | None = None,
        top_k: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Preset:
        """A copy with some fields changed; checks a placeholder prompt keeps its placeholder."""
        preset = self
        if target_prompt is not None and self.prompt_builder is not None:
            raise PatchscopesError(f"the {self.name} preset builds its own target prompt",
                                   hint="leave out the target prompt")
        if target_prompt is not None:
            if self.placeholder and not contains_placeholder(target_prompt, self.placeholder):
                raise PatchscopesError(
                    f"the target prompt {target_prompt!r} has no placeholder {self.placeholder!r}",
                    hint=f"the {self.name} preset patches the placeholder's last token; end the prompt with "
                    f"{self.placeholder!r}, e.g. '... , {self.placeholder}'",
                )
            position = self.placeholder if self.placeholder else -1
            preset = replace(preset, target_prompt=target_prompt, target_position=position)
        if target_layer is not None:
            preset = replace(preset, target_layer=target_layer)
        if readout is not None:
            preset = replace(preset, readout=readout)
        if top_k is not None:
            r = preset.readout
            preset = replace(preset, readout=replace(r, top_k=top_k) if isinstance(r, NextToken)
                             else replace(r, top_tokens=top_k))
        if max_new_tokens is not None:
            r = preset.readout
            preset = replace(preset, readout=replace(r, max_new_tokens=max_new_tokens) if isinstance(r, Generate)
                             else Generate(max_new_tokens=max_new_tokens, top_tokens=r.top_k))
        return preset

    def build(
        self,
        source: Source,
        *,
        source_model: LanguageModel,
        target_model: LanguageModel | None = None,
        mapping=None,
    ) -> Patchscope:
        """The patchscope this preset makes of ``source``."""
        target_model = target_model or source_model
        layer = self.target_layer
        if layer == "same":
            layer = source_model.check_layer(source.layer, "source layer")
        elif layer == "last":
            layer = target_model.num_layers - 1
        prompt = source.prompt if self.target_prompt is None else self.target_prompt
        position = source.position if self.target_position is None else self.target_position
        readout = self.readout
        if self.target_prompt is None and isinstance(readout, NextToken):
            readout = replace(readout, position=position)  # T = S: read where we patched
        writes: tuple[Write, ...] = ()
        if self.prompt_builder is not None:
            prompt, positions = self.prompt_builder(target_model)
            position, writes = positions[0], tuple(Write(layer, p) for p in positions[1:])
        target = Target(prompt, layer, position, mapping=mapping,
                        model=target_model if target_model is not source_model else None, writes=writes)
        return Patchscope(source, target, readout)


LOGIT_LENS = Preset(
    "logit-lens", None, None, "last", NextToken(),
    description="the final norm and unembedding read h directly (l* = last layer, T = S).",
)
TOKEN_IDENTITY = Preset(
    "token-identity", TOKEN_IDENTITY_PROMPT, -1, "same", NextToken(),
    description="h is patched into “cat -> cat … ?” at l* = l: which token does the model think h is?",
)
ENTITY_DESCRIPTION = Preset(
    "description", ENTITY_DESCRIPTION_PROMPT, "x", "same", Generate(max_new_tokens=20, stop=(",", "\n")),
    placeholder="x", separator=":",
    description="h is patched into a few-shot description prompt at x; the model writes a description.",
)

SELFIE_PLACEHOLDERS = 5
SELFIE_REPLY = "Sure, I will summarize the message:"


def selfie_prompt(model: LanguageModel, placeholders: int = SELFIE_PLACEHOLDERS,
                  reply: str = SELFIE_REPLY) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """SelfIE's interpretation prompt for ``model``: token ids and the placeholders' positions.

    SelfIE writes h into the input of decoder layer k (its quickstart's k = 1), that is, in this library's
    convention, over the output of block k − 1: the preset's default target layer 0.

    The user turn holds ``placeholders`` placeholders ``"_ "`` and the assistant's turn starts with
    ``reply``, in the model's chat template where its tokenizer has one, else in SelfIE's Llama-2 form
    ``"[INST] _ _ _ _ _ [/INST] Sure, I will summarize the message:"``. Each placeholder's positions are
    found as SelfIE does: the tokens the text gains when ``"_ "`` is appended.
    """
    mark = "\x00PLACEHOLDERS\x00"
    tokenizer = model.tokenizer
    before, after = "[INST] ", " [/INST] " + reply
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template that cannot render a plain user turn: SelfIE's own form
            text = None
        if isinstance(text, str) and mark in text:
            before, after = text.split(mark)
            after += reply
            bos = getattr(tokenizer, "bos_token", None)
            if bos and before.startswith(bos) and model.encode("")[:1] == [tokenizer.bos_token_id]:
                before = before[len(bos):]  # encode() adds it again
    text, positions = before, []
    for _ in range(placeholders):
        start = len(model.encode(text))
        text += "_ "
        positions += range(start, len(model.encode(text)))
    ids = model.encode(text + after)
    positions = [p for p in positions if p < len(ids)]
    return tuple(ids), tuple(positions)


SELFIE = Preset(
    "selfie", None, None, 0, Generate(max_new_tokens=30, relevancy=True), prompt_builder=selfie_prompt,
    description="h is written at the five placeholders of “[INST] _ _ _ _ _ [/INST] Sure, I will summarize the "
    "message:” at l* = 0; the model summarizes it, each token with its relevancy.",
)

SELF_EXPLANATION_QUESTION = 'What is the meaning of the word "X"?'
SELF_EXPLANATION_REPLY = 'The meaning of the word "X" is "'


def self_explanation_prompt(model: LanguageModel, question: str = SELF_EXPLANATION_QUESTION,
                            reply: str = SELF_EXPLANATION_REPLY,
                            placeholder: str = "X") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The self-explanation prompt of Kharlapenko, Nanda, Conmy et al. (2024, "Self-explaining SAE features")
    for ``model``: token ids and the positions of the placeholder's tokens (every occurrence).

    The user asks ``question`` and the assistant's turn starts with ``reply``, in the model's chat template where
    its tokenizer has one, else as plain text ``"Question: ...\nAnswer: ..."``. The vector goes to each
    placeholder ``"X"``, and the model's continuation of the open quote is its explanation.
    """
    tokenizer = model.tokenizer
    before, after = "Question: ", "\nAnswer: "
    if getattr(tokenizer, "chat_template", None):
        mark = "\x00QUESTION\x00"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template that cannot render a plain user turn: the plain form
            text = None
        if isinstance(text, str) and mark in text:
            before, after = text.split(mark)
            bos = getattr(tokenizer, "bos_token", None)
            if bos and before.startswith(bos) and model.encode("")[:1] == [tokenizer.bos_token_id]:
                before = before[len(bos):]  # encode() adds it again
    text = before + question + after + reply
    ids = model.encode(text)
    ends = [m.end() for m in re.finditer(r"(?<!\w)" + re.escape(placeholder) + r"(?!\w)", text)]
    if not ends:
        raise PatchscopesError(f"the self-explanation prompt has no placeholder {placeholder!r}",
                               hint="put the placeholder in the question or the reply")
    positions = sorted({model.token_at_char(text, ids, end - 1) for end in ends})
    return tuple(ids), tuple(positions)


SELF_EXPLANATION = Preset(
    "self-explanation", None, None, "same", Generate(max_new_tokens=16), prompt_builder=self_explanation_prompt,
    description='h is written at each X of “What is the meaning of the word "X"? … "X" means "” (chat template '
    "where the model has one) at l* = l; the model explains it.",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LOGIT_LENS, TOKEN_IDENTITY, ENTITY_DESCRIPTION, SELFIE,
                                                  SELF_EXPLANATION)}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name (``logit-lens``, ``token-identity``, ``description``, ``selfie``, ``self-explanation``)
    or the preset itself."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise PatchscopesError(f"unknown scope {name!r}", hint=f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]
