"""patchscopes: ask a language model what its own hidden states mean.

A hidden state h from a source run (model M, prompt S, layer l, position i) is patched through a mapping f
into a target run (model M*, prompt T, layer l*, position i*), and the target's output is read as a
description of h (Ghandeharioun et al., 2024).

    >>> import patchscopes as ps
    >>> model = ps.load_model("smollm2-135m")
    >>> scope = ps.Patchscope(ps.Source("The Eiffel Tower is in Paris", layer=8, position="Tower"),
    ...                       ps.Target(ps.TOKEN_IDENTITY_PROMPT, layer=8, position=-1))
    >>> ps.run(scope, model)[0].top_token
    >>> ps.sweep(model, "The Eiffel Tower is in Paris", "token-identity")  # a DataFrame
"""

from patchscopes.data.entities import Entity, EntitySet, read_entities, select_entities
from patchscopes.data.relations import Relation, load_relation, load_relations, mentions
from patchscopes.data.text import read_documents, split_documents
from patchscopes.data.two_hop import TwoHopQuery, build_queries
from patchscopes.engine import BatchBudget, greedy_generate
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.attention_knockout import KnockoutResult, attention_knockout
from patchscopes.experiments.attributes import AttributeResults, attributes_figure, evaluate_attributes
from patchscopes.experiments.causal_tracing import CausalTrace, causal_trace
from patchscopes.experiments.cross_model import cross_model_samples, summarize_cross_model
from patchscopes.experiments.entities import describe_entities, summarize_descriptions
from patchscopes.experiments.future_lens import evaluate_future, future_figure
from patchscopes.experiments.knows_fact import knows_fact
from patchscopes.experiments.multihop import evaluate_multihop, multihop_samples, summarize_multihop
from patchscopes.experiments.next_token import evaluate_next_token, next_token_samples
from patchscopes.experiments.probes import layer_probe, paired_ttest
from patchscopes.experiments.scoring import SentenceEmbedder, rouge_scores, score_descriptions
from patchscopes.experiments.vectors import describe_vectors, vectors_html
from patchscopes.lenses import (
    CrossModelMap,
    FutureLens,
    Lens,
    LinearRelation,
    TunedLensSettings,
    aligned_positions,
    fit_affine,
    fit_affine_lens,
    fit_cross_model_map,
    fit_future_lens,
    fit_lre,
    train_tuned_lens,
)
from patchscopes.mappings import Affine, FunctionMapping, Identity, StateMap
from patchscopes.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ArchitectureSpec,
    FastPathSupport,
    LanguageModel,
    cache_dir,
    discover_architecture,
    embedded_status,
    known_model_types,
    load_model,
    register_architecture,
)
from patchscopes.plots.notebook import HeatmapView, show
from patchscopes.presets import (
    ENTITY_DESCRIPTION,
    ENTITY_DESCRIPTION_PROMPT,
    LOGIT_LENS,
    PRESETS,
    SELF_EXPLANATION,
    SELFIE,
    TOKEN_IDENTITY,
    TOKEN_IDENTITY_PROMPT,
    Preset,
    get_preset,
    self_explanation_prompt,
    selfie_prompt,
)
from patchscopes.results import PatchResult, Readings, load_results, results_to_frame, save_results
from patchscopes.runner import run
from patchscopes.runs import Executor, LocalExecutor, ModelSpec, RayExecutor, RunDir, RunOptions
from patchscopes.scope import (
    AnswerProbs,
    AttentionKnockout,
    EmbeddingNoise,
    Generate,
    NextToken,
    Patchscope,
    Source,
    Target,
    Write,
)
from patchscopes.soft_prompt import SoftPrompt
from patchscopes.specs import parse_spec
from patchscopes.sweep import plan_sweep, sweep
from patchscopes.vectors import SAE, contrast_vector, load_sae, load_vectors

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ENTITY_DESCRIPTION",
    "ENTITY_DESCRIPTION_PROMPT",
    "LOGIT_LENS",
    "PRESETS",
    "SAE",
    "SELFIE",
    "SELF_EXPLANATION",
    "TOKEN_IDENTITY",
    "TOKEN_IDENTITY_PROMPT",
    "Affine",
    "AnswerProbs",
    "ArchitectureSpec",
    "AttentionKnockout",
    "AttributeResults",
    "BatchBudget",
    "CausalTrace",
    "CrossModelMap",
    "EmbeddingNoise",
    "Entity",
    "EntitySet",
    "Executor",
    "FastPathSupport",
    "FunctionMapping",
    "FutureLens",
    "Generate",
    "HeatmapView",
    "Identity",
    "KnockoutResult",
    "LanguageModel",
    "Lens",
    "LinearRelation",
    "LocalExecutor",
    "ModelSpec",
    "NextToken",
    "PatchResult",
    "Patchscope",
    "PatchscopesError",
    "Preset",
    "RayExecutor",
    "Readings",
    "Relation",
    "RunDir",
    "RunOptions",
    "SentenceEmbedder",
    "SoftPrompt",
    "Source",
    "StateMap",
    "Target",
    "TunedLensSettings",
    "TwoHopQuery",
    "Write",
    "aligned_positions",
    "attention_knockout",
    "attributes_figure",
    "build_queries",
    "cache_dir",
    "causal_trace",
    "contrast_vector",
    "cross_model_samples",
    "describe_entities",
    "describe_vectors",
    "discover_architecture",
    "embedded_status",
    "evaluate_attributes",
    "evaluate_future",
    "evaluate_multihop",
    "evaluate_next_token",
    "fit_affine",
    "fit_affine_lens",
    "fit_cross_model_map",
    "fit_future_lens",
    "fit_lre",
    "future_figure",
    "get_preset",
    "greedy_generate",
    "known_model_types",
    "knows_fact",
    "layer_probe",
    "load_model",
    "load_relation",
    "load_relations",
    "load_results",
    "load_sae",
    "load_vectors",
    "mentions",
    "multihop_samples",
    "next_token_samples",
    "paired_ttest",
    "parse_spec",
    "plan_sweep",
    "read_documents",
    "read_entities",
    "register_architecture",
    "results_to_frame",
    "rouge_scores",
    "run",
    "save_results",
    "score_descriptions",
    "select_entities",
    "self_explanation_prompt",
    "selfie_prompt",
    "show",
    "split_documents",
    "summarize_cross_model",
    "summarize_descriptions",
    "summarize_multihop",
    "sweep",
    "train_tuned_lens",
    "vectors_html",
]


DEPRECATED = {"Mapping": "StateMap"}
"""0.2's public names that now have another (``{old: new}``); the old ones import with a warning."""


def __getattr__(name: str):
    if name in DEPRECATED:
        import warnings

        new = DEPRECATED[name]
        warnings.warn(f"patchscopes.{name} is deprecated: use patchscopes.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (``__all__`` and ``__version__``) for ``dir(patchscopes)`` and tab completion, rather
    than every submodule Python has set as an attribute (``cli``, ``engine``, ``sweep``...)."""
    return sorted([*__all__, "__version__"])
