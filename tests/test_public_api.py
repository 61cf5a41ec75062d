"""The public API of 0.1 is still there: every name of its ``patchscopes.__all__`` imports from ``patchscopes``."""

from __future__ import annotations

import patchscopes as ps

API_0_1 = [
    "DEFAULT_MODEL", "EMBEDDED_MODELS", "ENTITY_DESCRIPTION", "ENTITY_DESCRIPTION_PROMPT", "LOGIT_LENS", "PRESETS",
    "TOKEN_IDENTITY", "TOKEN_IDENTITY_PROMPT", "Affine", "ArchitectureSpec", "AttributeResults", "BatchBudget",
    "CrossModelMap", "Entity", "EntitySet", "FunctionMapping", "Generate", "Identity", "LanguageModel", "Lens",
    "Mapping", "NextToken", "PatchResult", "Patchscope", "PatchscopesError", "Preset", "Readings", "Relation",
    "SentenceEmbedder", "Source", "Target", "TunedLensSettings", "TwoHopQuery", "aligned_positions",
    "attributes_figure", "build_queries", "cache_dir", "cross_model_samples", "describe_entities",
    "embedded_status", "evaluate_attributes", "evaluate_multihop", "evaluate_next_token", "fit_affine",
    "fit_affine_lens", "fit_cross_model_map", "get_preset", "greedy_generate", "known_model_types", "knows_fact",
    "layer_probe", "load_model", "load_relation", "load_relations", "load_results", "mentions", "multihop_samples",
    "next_token_samples", "paired_ttest", "parse_spec", "plan_sweep", "read_documents", "read_entities",
    "register_architecture", "results_to_frame", "rouge_scores", "run", "save_results", "score_descriptions",
    "select_entities", "split_documents", "summarize_cross_model", "summarize_descriptions", "summarize_multihop",
    "sweep", "train_tuned_lens",
]


def test_every_0_1_name_is_still_public():
    missing = [name for name in API_0_1 if not hasattr(ps, name)]
    assert not missing, missing
    assert set(API_0_1) - set(ps.DEPRECATED) <= set(ps.__all__)


def test_renamed_names_import_with_a_warning_and_are_the_new_objects():
    """``Mapping`` (the name of ``collections.abc.Mapping``) is ``StateMap`` now; the old name still works."""
    import pytest

    for old, new in ps.DEPRECATED.items():
        assert old not in ps.__all__ and new in ps.__all__
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(ps, old) is getattr(ps, new)
    with pytest.warns(DeprecationWarning):
        from patchscopes.mappings import Mapping
    assert Mapping is ps.StateMap
    namespace: dict = {}
    exec("from collections.abc import Mapping\nfrom patchscopes import *", namespace)
    import collections.abc

    assert namespace["Mapping"] is collections.abc.Mapping  # a star import no longer shadows it


def test_moved_objects_are_the_same_objects():
    """Deep paths moved; the objects did not: the facade and the new homes agree."""
    from patchscopes.data.relations import Relation
    from patchscopes.engine import BatchBudget, Generate, NextToken
    from patchscopes.experiments.knows_fact import knows_fact
    from patchscopes.lenses import Lens
    from patchscopes.models import LanguageModel, load_model

    assert ps.Relation is Relation and ps.BatchBudget is BatchBudget and ps.Lens is Lens
    assert ps.NextToken is NextToken and ps.Generate is Generate and ps.knows_fact is knows_fact
    assert ps.LanguageModel is LanguageModel and ps.load_model is load_model
