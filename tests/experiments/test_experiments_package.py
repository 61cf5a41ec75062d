"""The experiments package exports every experiment's entry points."""

from __future__ import annotations

import importlib

import patchscopes
import patchscopes.experiments as experiments


def test_every_exported_name_resolves():
    for name in experiments.__all__:
        assert getattr(experiments, name) is not None


def test_each_experiment_exports_its_evaluation_and_figure():
    for module, evaluate, figure in [
        ("next_token", "evaluate_next_token", "next_token_figure"),
        ("attributes", "evaluate_attributes", "attributes_figure"),
        ("entities", "describe_entities", "description_figure"),
        ("cross_model", "cross_model_samples", "cross_model_figure"),
        ("multihop", "evaluate_multihop", "multihop_figure"),
    ]:
        mod = importlib.import_module(f"patchscopes.experiments.{module}")
        for name in (evaluate, figure):
            assert name in experiments.__all__
            assert getattr(experiments, name) is getattr(mod, name)


def test_top_level_names_are_the_same_objects():
    for name in set(experiments.__all__) & set(patchscopes.__all__):
        assert getattr(patchscopes, name) is getattr(experiments, name)
