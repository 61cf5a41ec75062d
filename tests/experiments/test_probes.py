"""The linear-probe baseline: cross-validated logistic regression per layer, folds, and the t-test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from patchscopes.errors import PatchscopesError
from patchscopes.experiments.probes import _splits, bonferroni, layer_probe, paired_ttest, probe_folds


def blobs(n_per_class: int = 20, d: int = 16, spread: float = 0.1, seed: int = 0):
    """Three well-separated Gaussian classes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, size=(3, d))
    x = np.concatenate([c + rng.normal(0, spread, size=(n_per_class, d)) for c in centers])
    y = [name for name in ("red", "green", "blue") for _ in range(n_per_class)]
    return x, y


def test_probe_separates_separable_data_and_not_noise():
    x, y = blobs()
    noise = np.random.default_rng(1).normal(size=x.shape)
    states = np.stack([x, noise], axis=1)  # layer 4: separable; layer 7: pure noise
    frame = layer_probe(states, y, [4, 7], folds=3, seed=0)
    assert list(frame.columns) == ["layer", "fold", "accuracy", "n_test", "n_train", "classes"]
    assert len(frame) == 6 and frame["n_test"].groupby(frame["layer"]).sum().tolist() == [60, 60]
    by_layer = frame.groupby("layer")["accuracy"].mean()
    assert by_layer[4] == 1.0
    assert by_layer[7] < 0.7
    # Stratified folds: each training fold sees all three classes.
    assert (frame["classes"] == 3).all()


def test_unseen_objects_count_as_wrong_and_one_class_predicts_it():
    x = np.random.default_rng(0).normal(size=(6, 4))
    # Every object occurs once: no test object is ever seen in training.
    assert all(r["accuracy"] == 0.0 for r in probe_folds(x, list("abcdef"), folds=3))
    # A single class: the probe predicts it (no scikit-learn error).
    assert all(r["accuracy"] == 1.0 and r["classes"] == 1 for r in probe_folds(x, ["a"] * 6, folds=3))


def test_subject_groups_never_span_train_and_test():
    labels = np.array(["Yen", "Yen", "Euro", "Euro", "Euro", "Euro", "Peso", "Peso", "Peso"])
    groups = np.array(["Japan", "Japan", "France", "France", "Spain", "Spain", "Chile", "Chile", "Mexico"])
    for train, test in _splits(labels, 3, 0, groups):
        assert not set(groups[train]) & set(groups[test])
    # Every object once (as for company CEOs): plain group folds.
    unique = np.array(list("abcdef"))
    assert sorted(np.concatenate([test for _, test in _splits(unique, 3, 0, unique)]).tolist()) == list(range(6))
    with pytest.raises(PatchscopesError, match="2 groups cannot make 3 folds"):
        _splits(labels[:4], 3, 0, groups[:4])


def test_probe_input_errors():
    x, y = blobs(1)
    with pytest.raises(PatchscopesError, match="3 samples cannot make 4 folds"):
        probe_folds(x, y, folds=4)
    with pytest.raises(PatchscopesError, match="do not match"):
        probe_folds(x, y[:2])
    with pytest.raises(PatchscopesError, match="at least 2 folds"):
        probe_folds(x, y, folds=1)
    with pytest.raises(PatchscopesError, match="do not hold 2 layers"):
        layer_probe(x[:, None], y, [0, 1])


def test_paired_ttest_equals_scipy_with_bonferroni():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.8, size=10)
    b = a - rng.uniform(0.0, 0.2, size=10)
    expected = stats.ttest_rel(a, b)
    test = paired_ttest(a, b, n_tests=12)
    assert test.statistic == pytest.approx(float(expected.statistic))
    assert test.p_value == pytest.approx(float(expected.pvalue))
    assert test.p_bonferroni == pytest.approx(min(1.0, 12 * float(expected.pvalue)))
    assert test.mean_difference == pytest.approx(float(np.mean(a - b))) and test.n == 10
    assert test.significant == (test.p_bonferroni < 0.05) and test.winner == "a"
    assert paired_ttest(b, a, n_tests=12).winner == "b"
    # A large correction turns a significant difference into a tie.
    small = paired_ttest([0.5, 0.6, 0.7, 0.8], [0.45, 0.52, 0.66, 0.71])
    assert small.significant and paired_ttest([0.5, 0.6, 0.7, 0.8], [0.45, 0.52, 0.66, 0.71],
                                              n_tests=10_000).winner == "tie"


def test_ttest_edge_cases_and_bonferroni():
    same = paired_ttest([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert math.isnan(same.p_value) and not same.significant and same.winner == "tie"
    assert math.isnan(paired_ttest([0.5], [0.1]).p_value)
    assert bonferroni([0.01, 0.2, math.nan]) == [0.03, 0.6000000000000001, pytest.approx(math.nan, nan_ok=True)]
    assert bonferroni([0.3], n_tests=5) == [1.0]
    with pytest.raises(PatchscopesError, match="same length"):
        paired_ttest([1, 2], [1, 2, 3])
