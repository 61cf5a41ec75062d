"""Lenses: maps from a layer's hidden state to somewhere else, fitted or trained, saved and reloaded.

- :mod:`~patchscopes.lenses.base`: :class:`Lens` (one map per layer to the last layer), model identity checks.
- :mod:`~patchscopes.lenses.fit_data`: hidden states at sampled positions of documents, to fit on.
- :mod:`~patchscopes.lenses.affine`: the closed-form affine lens (the paper's "tuned lens" baseline).
- :mod:`~patchscopes.lenses.tuned`: Belrose et al.'s KL-trained tuned lens.
- :mod:`~patchscopes.lenses.cross_model`: affine maps between two models' layers (Experiment 4).
- :mod:`~patchscopes.lenses.future`: the future lens of Pal et al. (linear maps, learned soft prompts).
- :mod:`~patchscopes.lenses.lre`: the linear relational embedding (LRE) of Hernandez et al. and its attribute lens.

Imports: the root framework, :mod:`patchscopes.data`, :mod:`patchscopes.engine` and :mod:`patchscopes.models`;
never experiments or the CLI.
"""

from patchscopes.lenses.affine import AffineAccumulator, fit_affine, fit_affine_lens
from patchscopes.lenses.base import (
    LENS_KINDS,
    Lens,
    check_model_identity,
    compare_identity,
    digest_key,
    identity_map,
    lens_summary,
    model_identity,
)
from patchscopes.lenses.cross_model import (
    AlignedWindow,
    CrossModelMap,
    align_windows,
    aligned_positions,
    fit_cross_model_map,
    map_summary,
)
from patchscopes.lenses.fit_data import FitData, capture_all_layers, iter_hidden, plan_fit_data
from patchscopes.lenses.future import FutureLens, PromptSettings, fit_future_lens
from patchscopes.lenses.lre import LinearRelation, attribute_lens, faithfulness, fit_lre
from patchscopes.lenses.tuned import TunedLensSettings, kl_to_final, train_tuned_lens

__all__ = [
    "LENS_KINDS",
    "AffineAccumulator",
    "AlignedWindow",
    "CrossModelMap",
    "FitData",
    "FutureLens",
    "Lens",
    "LinearRelation",
    "PromptSettings",
    "TunedLensSettings",
    "align_windows",
    "aligned_positions",
    "attribute_lens",
    "capture_all_layers",
    "check_model_identity",
    "compare_identity",
    "digest_key",
    "faithfulness",
    "fit_affine",
    "fit_affine_lens",
    "fit_cross_model_map",
    "fit_future_lens",
    "fit_lre",
    "identity_map",
    "iter_hidden",
    "kl_to_final",
    "lens_summary",
    "map_summary",
    "model_identity",
    "plan_fit_data",
    "train_tuned_lens",
]
