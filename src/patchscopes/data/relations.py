"""Relation data for attribute extraction, under one import: the names of the modules that hold it.

- :mod:`~patchscopes.data.relation_types`: :class:`Relation`, :class:`RelationSample`, :class:`SourceContext`,
  :class:`AttributeSample`, :class:`FactCheck`.
- :mod:`~patchscopes.data.relation_loaders`: relation JSONs (``evandez/relations``) and the paper's TSVs
  (:func:`load_relation`, :func:`load_relations`, :func:`relation_files`, :func:`attach_windows`).
- :mod:`~patchscopes.data.target_prompts`: the placeholder ``x`` and the paper's 22 target prompts
  (:func:`check_target_prompt`, :func:`derive_target_prompt`, :func:`verbalize`).
- :mod:`~patchscopes.data.contexts`: source contexts and subject positions (:func:`subject_contexts`,
  :func:`corpus_windows`, :func:`locate_subject`, :func:`locate_samples`).
- :mod:`~patchscopes.data.matching`: whether a text names the object (:func:`mentions`, :func:`normalize_text`).

Every name this module held before the split imports from here still, as the same object.
"""

from patchscopes.data.contexts import (
    CONTEXT_KINDS,
    corpus_windows,
    locate_samples,
    locate_subject,
    subject_contexts,
    template_contexts,
)
from patchscopes.data.matching import mentions, normalize_text
from patchscopes.data.relation_loaders import (
    attach_windows,
    load_relation,
    load_relation_json,
    load_relation_tsv,
    load_relations,
    relation_files,
    relation_key,
    unescape,
)
from patchscopes.data.relation_types import AttributeSample, FactCheck, Relation, RelationSample, SourceContext
from patchscopes.data.target_prompts import (
    PAPER_TARGET_PROMPTS,
    PLACEHOLDER,
    check_target_prompt,
    derive_target_prompt,
    verbalize,
)

__all__ = [
    "CONTEXT_KINDS",
    "PAPER_TARGET_PROMPTS",
    "PLACEHOLDER",
    "AttributeSample",
    "FactCheck",
    "Relation",
    "RelationSample",
    "SourceContext",
    "attach_windows",
    "check_target_prompt",
    "corpus_windows",
    "derive_target_prompt",
    "load_relation",
    "load_relation_json",
    "load_relation_tsv",
    "load_relations",
    "locate_samples",
    "locate_subject",
    "mentions",
    "normalize_text",
    "relation_files",
    "relation_key",
    "subject_contexts",
    "template_contexts",
    "unescape",
    "verbalize",
]
