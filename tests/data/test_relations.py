"""The import path of 0.2: ``patchscopes.data.relations`` still gives every name it held, as the same objects."""

from __future__ import annotations

import importlib

import patchscopes
import patchscopes.data
import patchscopes.data.relations as relations

NAMES_0_2 = [
    "CONTEXT_KINDS", "PAPER_TARGET_PROMPTS", "PLACEHOLDER", "AttributeSample", "FactCheck", "Relation",
    "RelationSample", "SourceContext", "attach_windows", "check_target_prompt", "corpus_windows",
    "derive_target_prompt", "load_relation", "load_relation_json", "load_relation_tsv", "load_relations",
    "locate_samples", "locate_subject", "mentions", "normalize_text", "relation_files", "relation_key",
    "subject_contexts", "template_contexts", "unescape", "verbalize",
]
CONSTANTS = {"CONTEXT_KINDS": "contexts", "PAPER_TARGET_PROMPTS": "target_prompts", "PLACEHOLDER": "target_prompts"}
HOMES = ["contexts", "matching", "relation_loaders", "relation_types", "target_prompts"]


def test_every_0_2_name_still_imports_from_relations():
    missing = [name for name in NAMES_0_2 if not hasattr(relations, name)]
    assert not missing, missing
    assert sorted(relations.__all__) == sorted(NAMES_0_2)


def test_each_name_lives_in_one_of_the_modules_of_the_split():
    for name in NAMES_0_2:
        value = getattr(relations, name)
        home = CONSTANTS.get(name) or value.__module__.rsplit(".", 1)[-1]
        assert home in HOMES, (name, home)
        assert getattr(importlib.import_module(f"patchscopes.data.{home}"), name) is value, name


def test_package_and_facade_re_export_the_same_objects():
    for name in ("Relation", "load_relation", "load_relations", "mentions"):
        assert getattr(patchscopes, name) is getattr(relations, name) is getattr(patchscopes.data, name)
    assert patchscopes.data.normalize_text is relations.normalize_text
