"""The paper's baseline for attribute extraction: a linear probe per layer, and its significance test.

The Patchscopes paper compares its attribute-extraction patchscope with a logistic-regression probe trained
on the same hidden states (one probe per layer, 3-fold cross-validation, classes = the objects seen in
training), and tests the difference with a paired t-test and a Bonferroni correction. Its code was never
released; this is a reimplementation with scikit-learn:

- features are standardised on each training fold (``StandardScaler``), then ``LogisticRegression``
  (multinomial, L2, ``C=1``, ``lbfgs``) is fitted; a training fold with a single class predicts that class;
- folds are stratified by object where scikit-learn can (``StratifiedKFold``, shuffled with a seed), else
  plain shuffled ``KFold``; with ``groups`` (e.g. the subjects) ``StratifiedGroupKFold`` (or ``GroupKFold``
  where no class has enough members to stratify) keeps each group in one fold, so the probe is tested on
  subjects it never saw;
- a test sample whose object never occurs in its training folds cannot be predicted and counts as wrong.

    >>> folds = layer_probe(states, labels, layers=[0, 3, 6])   # one row per (layer, fold)
    >>> paired_ttest(patchscope_by_layer, probe_by_layer, n_tests=12)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from patchscopes.errors import PatchscopesError

PROBE_COLUMNS = ["layer", "fold", "accuracy", "n_test", "n_train", "classes"]


def _splits(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None):
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(labels)
    if groups is not None:
        n_groups = len(set(groups.tolist()))
        if n_groups < folds:
            raise PatchscopesError(f"{n_groups} groups cannot make {folds} folds",
                                   hint="use fewer folds or cross-validate over samples")
        _, counts = np.unique(labels, return_counts=True)
        if counts.max() < folds:  # no class can be stratified: plain group folds
            splitter = _group_kfold(folds, seed)
        else:
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return list(splitter.split(np.zeros(n), labels, groups))
    _, counts = np.unique(labels, return_counts=True)
    if counts.max() >= folds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # classes smaller than the number of folds
            return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), labels))
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n)))


def _group_kfold(folds: int, seed: int):
    from sklearn.model_selection import GroupKFold

    try:
        return GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    except TypeError:  # scikit-learn < 1.6 has no shuffling group folds
        return GroupKFold(n_splits=folds)


def probe_folds(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    folds: int = 3,
    seed: int = 0,
    groups: Sequence | None = None,
    C: float = 1.0,
    max_iter: int = 1000,
) -> list[dict]:
    """Cross-validated accuracy of a logistic-regression probe on one set of features.

    Args:
        features: ``(n, d)`` hidden states.
        labels: The class (object) of each sample.
        folds: Number of cross-validation folds (the paper: 3).
        seed: Seed of the fold shuffling.
        groups: Optional group per sample (e.g. the subject); a group never spans training and test.
        C: Inverse L2 regularisation strength.
        max_iter: Iteration limit of the solver.

    Returns:
        One dict per fold: ``fold, accuracy, n_test, n_train, classes`` (classes seen in training).

    Raises:
        PatchscopesError: Fewer samples (or groups) than folds, or mismatched lengths.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    if x.ndim != 2 or len(x) != len(y):
        raise PatchscopesError(f"features {x.shape} and {len(y)} labels do not match")
    if folds < 2:
        raise PatchscopesError(f"the probe needs at least 2 folds, got {folds}")
    if len(y) < folds:
        raise PatchscopesError(f"{len(y)} samples cannot make {folds} folds",
                               hint="use more samples (or relations with more known facts)")
    g = None if groups is None else np.asarray([str(v) for v in groups])
    out = []
    for fold, (train, test) in enumerate(_splits(y, folds, seed, g)):
        classes = np.unique(y[train])
        if len(classes) == 1:
            predicted = np.full(len(test), classes[0])
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x[train], y[train])
            predicted = model.predict(x[test])
        out.append({"fold": fold, "accuracy": float(np.mean(predicted == y[test])), "n_test": len(test),
                    "n_train": len(train), "classes": len(classes)})
    return out


def layer_probe(
    states: np.ndarray,
    labels: Sequence[str],
    layers: Sequence[int],
    *,
    folds: int = 3,
    seed: int = 0,
    groups: Sequence | None = None,
    C: float = 1.0,
    max_iter: int = 1000,
) -> pd.DataFrame:
    """A probe per layer on ``states[:, k]`` (the hidden states of ``layers[k]``), the same folds for all.

    Args:
        states: ``(n, len(layers), d)`` hidden states.
        labels: The object of each sample.
        layers: The layer number of each slice of ``states``.
        folds, seed, groups, C, max_iter: As in :func:`probe_folds`.

    Returns:
        Columns ``layer, fold, accuracy, n_test, n_train, classes``: one row per (layer, fold).
    """
    states = np.asarray(states)
    if states.ndim != 3 or states.shape[1] != len(layers):
        raise PatchscopesError(f"states of shape {states.shape} do not hold {len(layers)} layers")
    rows = []
    for k, layer in enumerate(layers):
        for record in probe_folds(states[:, k], labels, folds=folds, seed=seed, groups=groups, C=C,
                                  max_iter=max_iter):
            rows.append({"layer": int(layer), **record})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


@dataclass(frozen=True)
class TTest:
    """A paired t-test of ``a`` against ``b``.

    Attributes:
        statistic: The t statistic (positive when ``a`` is larger on average).
        p_value: The two-sided p-value.
        p_bonferroni: ``min(1, p_value × n_tests)``.
        n_tests: The number of tests corrected for.
        mean_difference: The mean of ``a - b``.
        n: The number of pairs.
        alpha: The significance level.
    """

    statistic: float
    p_value: float
    p_bonferroni: float
    n_tests: int
    mean_difference: float
    n: int
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """Whether the corrected p-value is below ``alpha``."""
        return not math.isnan(self.p_bonferroni) and self.p_bonferroni < self.alpha

    @property
    def winner(self) -> str:
        """``"a"`` or ``"b"`` where the difference is significant, else ``"tie"``."""
        if not self.significant:
            return "tie"
        return "a" if self.mean_difference > 0 else "b"


def bonferroni(p_values: Sequence[float], n_tests: int | None = None) -> list[float]:
    """Bonferroni-corrected p-values: each multiplied by the number of tests, capped at 1 (NaN stays NaN)."""
    m = len(p_values) if n_tests is None else n_tests
    return [p if math.isnan(p) else min(1.0, p * m) for p in p_values]


def paired_ttest(a: Sequence[float], b: Sequence[float], *, n_tests: int = 1, alpha: float = 0.05) -> TTest:
    """``scipy.stats.ttest_rel(a, b)`` with a Bonferroni correction for ``n_tests`` tests.

    Identical samples (or fewer than two pairs) give a NaN p-value: not significant. A constant non-zero
    difference gives p = 0, as in scipy.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise PatchscopesError(f"paired samples must be two lists of the same length, got {x.shape} and {y.shape}")
    if n_tests < 1:
        raise PatchscopesError(f"n_tests must be at least 1, got {n_tests}")
    diff = float(np.mean(x - y)) if len(x) else math.nan
    if len(x) < 2 or np.all(x == y):
        return TTest(math.nan, math.nan, math.nan, n_tests, diff, len(x), alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical samples
        result = stats.ttest_rel(x, y)
    p = float(result.pvalue)
    return TTest(float(result.statistic), p, bonferroni([p], n_tests)[0], n_tests, diff, len(x), alpha)
