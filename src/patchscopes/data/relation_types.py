"""The types of relation data: a relation, its (subject, object) samples, source contexts, located samples and
fact checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from patchscopes.data.target_prompts import derive_target_prompt, verbalize


@dataclass(frozen=True)
class RelationSample:
    """A (subject, object) pair of a relation, with other accepted names of the object."""

    subject: str
    object: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceContext:
    """A text in which a subject occurs.

    Attributes:
        text: The context.
        kind: ``"wikitext"`` (the paper's windows), ``"corpus"`` (a user's text) or ``"template"``.
        subject_end: The character offset just after the occurrence of the subject that is meant, where it is
            known; otherwise the first occurrence is used.
    """

    text: str
    kind: str
    subject_end: int | None = None


@dataclass
class Relation:
    """A relation: its (subject, object) samples, templates and, where known, target prompt and windows.

    Attributes:
        name: A readable name (``"country capital city"``).
        key: An identifier (the file stem, ``"country_capital_city"``); matches the paper's data.
        samples: Distinct (subject, object) pairs, in file order.
        prompt_templates: Templates with ``{}`` for the subject (JSON files).
        prompt_templates_zs: The zero-shot templates of the JSON schema (kept, unused).
        properties: The JSON's ``properties`` (relation type, domain and range names...).
        target_prompt: The target prompt with the placeholder ``x`` (from the file or the paper), if any.
        windows: WikiText windows per subject (from a preprocessed TSV).
        path: The file it was read from.
    """

    name: str
    key: str
    samples: list[RelationSample]
    prompt_templates: list[str] = field(default_factory=list)
    prompt_templates_zs: list[str] = field(default_factory=list)
    properties: dict = field(default_factory=dict)
    target_prompt: str | None = None
    windows: dict[str, list[SourceContext]] = field(default_factory=dict)
    path: Path | None = None

    def resolved_target_prompt(self) -> str:
        """The target prompt: the relation's own (file or paper), or one derived from its first template."""
        if self.target_prompt is not None:
            return self.target_prompt
        return derive_target_prompt(self.prompt_templates, what=f"relation {self.name!r}")

    def verbalize(self, subject: str, target_prompt: str | None = None) -> str:
        """The target prompt with ``subject`` in place of the placeholder (the "knows the fact" prompt)."""
        return verbalize(target_prompt or self.resolved_target_prompt(), subject)


@dataclass(frozen=True)
class AttributeSample:
    """One sample of the experiment: a (subject, object) pair in one source context, located for a model.

    Attributes:
        subject, object, aliases: The fact.
        text: The source prompt S.
        position: i, the index of the subject's last token in the model's tokens of ``text``.
        token: That token, decoded.
        kind: Where the context came from (see :data:`~patchscopes.data.contexts.CONTEXT_KINDS`).
    """

    subject: str
    object: str
    aliases: tuple[str, ...]
    text: str
    position: int
    token: str
    kind: str


@dataclass(frozen=True)
class FactCheck:
    """The outcome of :func:`~patchscopes.experiments.knows_fact.knows_fact` for one prompt."""

    prompt: str
    object: str
    generated_text: str
    known: bool
