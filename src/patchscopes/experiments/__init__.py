"""The paper's experiments as functions that return tables (and commands under ``patchscopes eval``).

One module per experiment: :mod:`~patchscopes.experiments.next_token` (section 4.1),
:mod:`~patchscopes.experiments.attributes` (4.2), :mod:`~patchscopes.experiments.entities` (4.3),
:mod:`~patchscopes.experiments.cross_model` (4.4) and :mod:`~patchscopes.experiments.multihop` (5). Their metrics
and filters live beside them: :mod:`~patchscopes.experiments.probes` (the logistic-regression baseline),
:mod:`~patchscopes.experiments.scoring` (Rouge, SBERT) and :mod:`~patchscopes.experiments.knows_fact`.

Prior methods as patchscopes: :mod:`~patchscopes.experiments.causal_tracing` (ROME) and
:mod:`~patchscopes.experiments.attention_knockout` (Geva et al. 2023), with
:mod:`~patchscopes.experiments.originals`, the original procedures written plainly, which the tests hold them
equal to.

Directions as patchscopes: :mod:`~patchscopes.experiments.vectors` (:func:`describe_vectors`: SAE features,
steering vectors and probe directions in words, the scale chosen by self-similarity and entropy).

Imports: vectors, lenses, data, the root framework, the engine and models; never the CLI.
"""

from patchscopes.experiments.attention_knockout import KnockoutResult, attention_knockout
from patchscopes.experiments.attributes import (
    AttributeResults,
    attributes_figure,
    default_target_layers,
    evaluate_attributes,
    subject_states,
)
from patchscopes.experiments.causal_tracing import CausalTrace, causal_trace
from patchscopes.experiments.cross_model import (
    cross_model_descriptions,
    cross_model_figure,
    cross_model_samples,
    summarize_cross_descriptions,
    summarize_cross_model,
)
from patchscopes.experiments.entities import (
    clean_description,
    describe_entities,
    description_figure,
    description_samples,
    summarize_descriptions,
)
from patchscopes.experiments.multihop import (
    evaluate_multihop,
    multihop_figure,
    multihop_samples,
    summarize_multihop,
)
from patchscopes.experiments.next_token import (
    NEXT_TOKEN_METHODS,
    demo_prompt,
    evaluate_next_token,
    next_token_figure,
    next_token_samples,
    random_demo_words,
    sample_positions,
    summarize_next_token,
)
from patchscopes.experiments.vectors import choose_scales, describe_vectors, selection_signals, vectors_html

__all__ = [
    "NEXT_TOKEN_METHODS",
    "AttributeResults",
    "CausalTrace",
    "KnockoutResult",
    "attention_knockout",
    "attributes_figure",
    "causal_trace",
    "choose_scales",
    "clean_description",
    "cross_model_descriptions",
    "cross_model_figure",
    "cross_model_samples",
    "default_target_layers",
    "demo_prompt",
    "describe_entities",
    "describe_vectors",
    "description_figure",
    "description_samples",
    "evaluate_attributes",
    "evaluate_multihop",
    "evaluate_next_token",
    "multihop_figure",
    "multihop_samples",
    "next_token_figure",
    "next_token_samples",
    "random_demo_words",
    "sample_positions",
    "selection_signals",
    "subject_states",
    "summarize_cross_descriptions",
    "summarize_cross_model",
    "summarize_descriptions",
    "summarize_multihop",
    "summarize_next_token",
    "vectors_html",
]
