"""Target prompts: the placeholder ``x``, the paper's 22 prompts, and checking, deriving and filling them in.

A relation's **target prompt** ends in (or contains) the placeholder ``x``: the paper's prompt for its 22
relations (:data:`PAPER_TARGET_PROMPTS`), the TSV's ``prompt_target``, one given by the user, or else one
derived from the first template (``"The capital city of {} is"`` → ``"The capital city of x is"``,
:func:`derive_target_prompt`). Its **verbalization** for a subject puts the subject in place of ``x``
(``"The capital city of France is"``, :func:`verbalize`): the prompt of the "knows the fact" check
(:func:`~patchscopes.experiments.knows_fact.knows_fact`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from patchscopes.errors import PatchscopesError

PLACEHOLDER = "x"
"""The word that stands for the subject in a target prompt."""

PAPER_TARGET_PROMPTS: dict[str, str] = {
    "fruit_inside_color": "On the inside, the color of x",
    "fruit_outside_color": "On the outside, the color of x",
    "object_superclass": "Among the superclasses of animal, bird, fish, vegetable, flower, fruit, the superclass of x",
    "substance_phase": "At room temperature, the phase of matter of x",
    "task_done_by_person": "The professional role most suited to handle x",
    "task_done_by_tool": "The tool that is used for x",
    "word_sentiment": "Among positive, negative, neutral, the sentiment of x",
    "work_location": "The place of work where you can usually find a x",
    "company_ceo": "The name of the CEO of x",
    "country_capital_city": "The capital city of x",
    "country_currency": "The official currency of x",
    "country_largest_city": "The largest city in x",
    "food_from_country": "The country of origin for x",
    "person_father": "Name of father of x",
    "person_mother": "Name of mother of x",
    "person_plays_position_in_sport": "In their sport, the position played by x",
    "person_plays_pro_sport": "The professional sport played by x",
    "pokemon_evolutions": "The evolved form of x",
    "product_by_company": "The company which developed x",
    "star_constellation": "The name of the constellation including x",
    "superhero_archnemesis": "The name of the superhero archnemesis of x",
    "superhero_person": "Secret identity of x",
}
"""The paper's 22 target prompts (the ``prompt_target`` column of its preprocessed data), by relation key."""


def _placeholder_matches(prompt: str, placeholder: str = PLACEHOLDER) -> list[re.Match]:
    return list(re.finditer(r"(?<!\w)" + re.escape(placeholder) + r"(?!\w)", prompt))


def check_target_prompt(prompt: str, placeholder: str = PLACEHOLDER) -> str:
    """Check that ``prompt`` has exactly one whole-word placeholder; return it unchanged.

    Raises:
        PatchscopesError: No placeholder, or several.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PatchscopesError("the target prompt is empty", hint=f"give a prompt with the placeholder {placeholder!r}")
    found = len(_placeholder_matches(prompt, placeholder))
    if found != 1:
        what = "no" if not found else f"{found} whole-word"
        raise PatchscopesError(
            f"the target prompt {prompt!r} has {what} placeholder {placeholder!r}",
            hint=f"use exactly one {placeholder!r} as a word where the subject goes, e.g. 'The capital city of x'",
        )
    return prompt


def derive_target_prompt(templates: Sequence[str], *, what: str = "the relation") -> str:
    """A target prompt from a relation's templates: the first usable one with ``{}`` replaced by ``x``.

    Raises:
        PatchscopesError: No template with exactly one ``{}`` that gives a prompt with one placeholder.
    """
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            continue
        if _placeholder_matches(template):
            continue  # the word x already occurs: the placeholder would be ambiguous
        return template.replace("{}", PLACEHOLDER)
    raise PatchscopesError(
        f"cannot derive a target prompt for {what}: no template with exactly one '{{}}'",
        hint="give a target prompt ending in the placeholder x (--target-prompt 'NAME=The capital city of x')",
    )


def verbalize(target_prompt: str, subject: str, placeholder: str = PLACEHOLDER) -> str:
    """``target_prompt`` with its (last whole-word) placeholder replaced by ``subject``.

    Example:
        >>> verbalize("The capital city of x", "France")
        'The capital city of France'
    """
    matches = _placeholder_matches(target_prompt, placeholder)
    if not matches:
        raise PatchscopesError(f"the target prompt {target_prompt!r} has no placeholder {placeholder!r}")
    m = matches[-1]
    return target_prompt[: m.start()] + subject + target_prompt[m.end():]

