"""RunOptions: one value for how every experiment and fit runs, and 0.2's separate keywords still accepted."""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path

import pytest

import patchscopes as ps
from patchscopes.experiments.causal_tracing import causal_trace
from patchscopes.runs import RunOptions, run_options
from patchscopes.runs.options import RUN_OPTION_NAMES

PROMPT = "The Eiffel Tower is located in the city of"
EXPERIMENTS = Path(__file__).resolve().parents[2] / "src" / "patchscopes" / "experiments"
LENSES = EXPERIMENTS.parent / "lenses"


def test_defaults_and_run_keywords():
    options = RunOptions()
    assert options.run_kwargs() == {"engine": "batched", "budget": None, "progress": False, "executor": None,
                                    "run_dir": None}
    assert options.with_(progress=True).progress and not options.progress  # frozen: with_ copies


def test_bad_values_are_refused_at_once():
    with pytest.raises(ps.PatchscopesError, match="unknown engine"):
        RunOptions(engine="fast")
    with pytest.raises(ps.PatchscopesError, match="BatchBudget"):
        RunOptions(budget=32)  # type: ignore[arg-type]


def test_legacy_keywords_warn_and_fold_in():
    with pytest.warns(DeprecationWarning, match=r"options=RunOptions\(engine=\.\.\., progress=\.\.\.\)"):
        options = run_options(None, {"engine": "reference", "progress": True}, "f")
    assert options == RunOptions(engine="reference", progress=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_options(RunOptions(progress=True), {}, "f") == RunOptions(progress=True)


def test_unknown_keyword_and_wrong_type_name_the_fix():
    with pytest.raises(ps.PatchscopesError, match=r"unexpected keyword argument.*enginee") as err:
        run_options(None, {"enginee": "batched"}, "causal_trace")
    assert "options=RunOptions" in err.value.hint
    with pytest.raises(ps.PatchscopesError, match="must be a RunOptions"):
        run_options({"engine": "batched"}, {}, "f")  # type: ignore[arg-type]


def test_an_experiment_gives_the_same_with_either_spelling(tiny_llama):
    new = causal_trace(tiny_llama, PROMPT, "Eiffel Tower", noise_samples=2, options=RunOptions(engine="reference"))
    with pytest.warns(DeprecationWarning):
        old = causal_trace(tiny_llama, PROMPT, "Eiffel Tower", noise_samples=2, engine="reference")
    assert (new.p_restored == old.p_restored).all()
    with pytest.raises(ps.PatchscopesError, match="unexpected keyword"):
        causal_trace(tiny_llama, PROMPT, "Eiffel Tower", noise_samples=2, enigne="reference")


def _public_functions(folder: Path):
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                yield path.stem, node


def test_no_experiment_or_fit_declares_the_run_options_one_by_one():
    """The run options are one ``options`` value; a function that re-declares ``engine=``, ``progress=``...
    fails here (the lower-level readers of hidden states, which only draw a bar, are not experiments)."""
    readers = {"collect_aligned_states", "iter_hidden", "sample_future_positions", "future_states",
               "generate_texts", "knows_fact"}
    found = []
    for folder in (EXPERIMENTS, LENSES):
        for module, fn in _public_functions(folder):
            names = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            if fn.name not in readers and names & set(RUN_OPTION_NAMES):
                found.append(f"{module}.{fn.name}: {sorted(names & set(RUN_OPTION_NAMES))}")
    assert not found, found


@pytest.mark.parametrize("path", ["experiments.attributes.evaluate_attributes",
                                  "experiments.next_token.next_token_samples",
                                  "experiments.entities.description_samples", "experiments.future_lens.evaluate_future",
                                  "experiments.multihop.multihop_samples", "experiments.causal_tracing.causal_trace",
                                  "experiments.attention_knockout.attention_knockout",
                                  "experiments.cross_model.cross_model_samples", "lenses.lre.fit_lre",
                                  "lenses.lre.faithfulness", "lenses.affine.fit_affine_lens",
                                  "lenses.tuned.train_tuned_lens", "lenses.future.fit_future_lens",
                                  "lenses.cross_model.fit_cross_model_map"])
def test_every_experiment_and_fit_takes_options(path):
    import importlib

    module, name = path.rsplit(".", 1)
    params = inspect.signature(getattr(importlib.import_module(f"patchscopes.{module}"), name)).parameters
    assert "options" in params and params["options"].default is None
    assert not set(params) & set(RUN_OPTION_NAMES)


def test_settings_record_engine_and_budget_as_0_2_did():
    """A run directory's manifest holds ``engine`` and ``budget`` as separate settings, as 0.2 wrote them, so
    that its folders still resume; progress, executor and the folder itself are not settings."""
    from patchscopes.runs import settings_of

    arguments = {"samples": 4, "options": RunOptions(engine="reference", progress=True, run_dir="x"), "legacy": {}}
    assert settings_of(arguments) == {"samples": 4, "engine": "reference", "budget": None}
    assert settings_of(arguments, exclude=("engine", "budget")) == {"samples": 4}
