"""Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations in Auto-Regressive
Language Models") as patchscopes: several l*, f = 0 on attention edges, T = S.

For a window of ``window`` consecutive layers starting at each layer l (cut at the top of the model), the
attention from the last position to a set of positions is blocked in every head, and the probability of the
model's own prediction (its top token on the intact prompt) is read. The sets, as in the paper:

- ``subject``: the subject's tokens;
- ``non-subject``: every other token before the last;
- ``last``: the last position itself.

The measure is the relative change ``(p_knocked − p_original) / p_original``. The paper finds, on GPT-2 and
GPT-J, that cutting the last position off the subject hurts in the upper-middle layers (where the attribute
is extracted), cutting it off the non-subject tokens hurts earlier, and the last position's own edge matters
little. :func:`~patchscopes.experiments.originals.geva_knockout` is the procedure written plainly (a fresh
causal mask per blocked layer), which the tests hold this equal to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from patchscopes.engine.interventions import check_knockout_support
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.runner import run
from patchscopes.runs import RunOptions, run_options
from patchscopes.scope import AnswerProbs, AttentionKnockout, NextToken, Patchscope, Target, token_span

BLOCKED_SETS = ("subject", "non-subject", "last")


@dataclass
class KnockoutResult:
    """Attention knockout on one prompt.

    Attributes:
        prompt: The prompt; ``tokens`` its tokens; ``subject`` the subject's positions.
        prediction: The model's top token on the intact prompt (``prediction_id`` its id).
        p_original: Its probability on the intact prompt.
        window: Layers blocked together.
        records: One dict per (window start, blocked set).
    """

    prompt: str
    tokens: list[str]
    subject: tuple[int, ...]
    prediction: str
    prediction_id: int
    p_original: float
    window: int
    records: list[dict] = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """:attr:`records` as a table."""
        return pd.DataFrame(self.records)

    def figure(self, title: str | None = None):
        """The relative change (%) of p(prediction) per window start, one line per blocked set."""
        import plotly.graph_objects as go

        frame = self.to_frame()
        fig = go.Figure()
        for blocked, color in zip(BLOCKED_SETS, ("#1f77b4", "#2ca02c", "#d62728")):
            part = frame[frame["blocked"] == blocked]
            if len(part):
                fig.add_trace(go.Scatter(x=part["layer"], y=100 * part["relative_change"], mode="lines+markers",
                                         name=f"last → {blocked}", line={"color": color}))
        fig.update_layout(
            title=title or f"Attention knockout, window {self.window}: p({self.prediction.strip()}) "
                           f"= {self.p_original:.3f} intact",
            xaxis_title="first blocked layer", yaxis_title="relative change of p (%)", width=760, height=420)
        return fig


def blocked_positions(n_tokens: int, subject: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The three sets of key positions, for a prompt of ``n_tokens`` (the query is the last token)."""
    last = n_tokens - 1
    return {
        "subject": tuple(p for p in subject if p != last),
        "non-subject": tuple(p for p in range(last) if p not in subject),
        "last": (last,),
    }


def attention_knockout(
    model: LanguageModel,
    prompt: str,
    subject: str,
    *,
    window: int = 9,
    blocked: tuple[str, ...] = BLOCKED_SETS,
    options: RunOptions | None = None,
    **legacy: Any,
) -> KnockoutResult:
    """Attention knockout of ``prompt``: every window start × every blocked set.

    Args:
        model: The model.
        prompt: The prompt, e.g. ``"The Eiffel Tower is located in the city of"``.
        subject: The subject, a substring of the prompt.
        window: Consecutive layers blocked from each start layer (Geva et al.: 9).
        blocked: Which of :data:`BLOCKED_SETS` the last token is blocked from attending to.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Raises:
        PatchscopesError: The subject is not in the prompt, the window does not fit the model, an unknown
            set is asked for, or the model's attention cannot be masked.
    """
    options = run_options(options, legacy, "attention_knockout")
    check_knockout_support(model)
    n_layers = model.num_layers
    if not 1 <= window <= n_layers:
        raise PatchscopesError(f"the window of {window} layers does not fit {model.name} ({n_layers} layers)",
                               hint=f"use a window in 1..{n_layers}")
    unknown = [b for b in blocked if b not in BLOCKED_SETS]
    if unknown:
        raise PatchscopesError(f"unknown blocked set {unknown[0]!r}", hint=f"use {', '.join(BLOCKED_SETS)}")
    if not subject or not subject.strip():
        raise PatchscopesError("the subject is empty", hint="give the subject as it appears in the prompt")
    ids = model.encode(prompt)
    span = token_span(model, prompt, ids, subject.strip(), "subject")
    intact = run(Patchscope(None, Target(prompt, 0), NextToken(top_k=1)), model, engine=options.engine)[0].readings
    prediction_id, p_original = intact.top_token_ids[0], intact.top_probs[0]
    readout = AnswerProbs(answers=(prediction_id,), top_k=1)
    sets = {name: keys for name, keys in blocked_positions(len(ids), span).items() if name in blocked and keys}
    cells, scopes = [], []
    for start in range(n_layers):
        layers = tuple(range(start, min(n_layers, start + window)))
        for name, keys in sets.items():
            cells.append((start, layers, name))
            scopes.append(Patchscope(None, Target(prompt, 0, knockout=AttentionKnockout(layers, keys)), readout))
    results = run(scopes, model, **options.run_kwargs())
    records = []
    for (start, layers, name), result in zip(cells, results):
        p = result.readings.answer_probs[0]
        records.append({
            "layer": start, "layers": list(layers), "blocked": name, "window": window,
            "prediction": model.token_labels([prediction_id])[0], "p_original": p_original, "p_knocked": p,
            "relative_change": (p - p_original) / p_original if p_original > 0 else float("nan"),
        })
    return KnockoutResult(prompt, model.token_labels(ids), span, model.token_labels([prediction_id])[0],
                          int(prediction_id), float(p_original), window, records)
