"""Presets: named patchscope configurations from the paper.

A :class:`Preset` builds the target of a patch from its source: the target prompt, position and layer
(``"same"`` as the source's, ``"last"``, or a number) and the readout. The three presets:

- :data:`LOGIT_LENS`: l* = L-1 at the source's own position, read through the final norm and unembedding.
- :data:`TOKEN_IDENTITY`: the few-shot identity prompt of the paper's code, patched at its last position,
  l* = l, next-token readout.
- :data:`ENTITY_DESCRIPTION`: the paper's few-shot description prompt ending in the placeholder ``x``,
  l* = l, generation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.scope import Generate, NextToken, Patchscope, Readout, Source, Target, contains_placeholder

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
    """

    name: str
    target_prompt: str | None
    target_position: int | str | None
    target_layer: TargetLayer
    readout: Readout
    placeholder: str | None = None
    separator: str | None = None

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
        target = Target(prompt, layer, position, mapping=mapping,
                        model=target_model if target_model is not source_model else None)
        return Patchscope(source, target, readout)


LOGIT_LENS = Preset("logit-lens", None, None, "last", NextToken())
TOKEN_IDENTITY = Preset("token-identity", TOKEN_IDENTITY_PROMPT, -1, "same", NextToken())
ENTITY_DESCRIPTION = Preset(
    "description", ENTITY_DESCRIPTION_PROMPT, "x", "same", Generate(max_new_tokens=20, stop=(",", "\n")),
    placeholder="x", separator=":",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LOGIT_LENS, TOKEN_IDENTITY, ENTITY_DESCRIPTION)}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name (``logit-lens``, ``token-identity``, ``description``) or the preset itself."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise PatchscopesError(f"unknown scope {name!r}", hint=f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]
