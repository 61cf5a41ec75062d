"""The paper's experiments as functions that return tables (and commands under ``patchscopes eval``)."""

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

__all__ = [
    "NEXT_TOKEN_METHODS",
    "demo_prompt",
    "evaluate_next_token",
    "next_token_figure",
    "next_token_samples",
    "random_demo_words",
    "sample_positions",
    "summarize_next_token",
]
