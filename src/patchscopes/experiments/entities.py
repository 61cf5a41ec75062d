"""Experiment 3 of the paper: describing an entity from its hidden state in the first layers.

For each entity, the source is its bare name (S = the name, i = its last token, layer l) and the target the
paper's few-shot prompt (:data:`~patchscopes.presets.ENTITY_DESCRIPTION_PROMPT`, ``"Syria: Country in the
Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean multinational major appliance and
consumer electronics corporation, x"``), patched at the placeholder ``x`` (its last token), l* = l. The patched
model generates up to 50 tokens greedily (:data:`DESCRIPTION_READOUT`).

**The description** is cut from the generated text by :func:`clean_description`: up to the first ``","`` or
newline (the demonstrations are separated by ``", "``: the model's next entry starts there), then, if the
text holds a ``":"``, only what follows the last one (the model often writes ``": Italian artist"``, and
sometimes continues the name first, ``" Coates: American actor"``, or invents one, ``": The Golden Goat:
American football team"``), stripped of spaces.

**Scores** (:mod:`patchscopes.experiments.scoring`): RougeL and Rouge1 F-measures and the SBERT cosine against the
entity's reference description, where it has one. ``reference="self"`` scores against the target model's
own description of the entity instead: the same prompt with the name written in place of ``x``, run without a
patch and cut the same way. That asks whether the hidden state carries what the model says when it reads the
name, not whether the description is true; it is labelled ``reference_kind = "self"``.

The same function serves cross-model description (:mod:`patchscopes.experiments.cross_model`): any list of
(l, l*, f) pairs and another target model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from patchscopes.data.entities import Entity
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.scoring import SentenceEmbedder, score_descriptions
from patchscopes.models import LanguageModel
from patchscopes.plots import add_band_line
from patchscopes.presets import ENTITY_DESCRIPTION_PROMPT
from patchscopes.runner import run
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import Generate, Patchscope, Source, Target, contains_placeholder
from patchscopes.specs import parse_spec

DESCRIPTION_STOP = (",", "\n")
DESCRIPTION_READOUT = Generate(max_new_tokens=50, stop=DESCRIPTION_STOP)
DEFAULT_LAYERS = None
"""``None``: the paper's first ten layers, ``0:10`` (every layer of a model with fewer)."""
FIRST_LAYERS = 10
REFERENCE_KINDS = ("file", "self")
SCORES = ("rougeL", "rouge1", "sbert")
SAMPLE_COLUMNS = ["entity", "group", "popularity", "layer", "target_layer", "mapping", "generated", "description",
                  "reference", "reference_kind", *SCORES]


def clean_description(generated: str) -> str:
    """The description in a generated continuation of the description prompt.

    Cut at the first ``","`` or newline; keep what follows the last ``":"`` if there is one; strip spaces.

    Example:
        >>> clean_description(": Italian artist, Paris: capital of France")
        'Italian artist'
        >>> clean_description(" Coates: American actor")
        'American actor'
        >>> clean_description(": The Golden Goat: American football team")
        'American football team'
    """
    text = generated
    for stop in DESCRIPTION_STOP:
        text = text.split(stop, 1)[0]
    if ":" in text:
        text = text.rsplit(":", 1)[1]
    return text.strip()


def self_prompt(prompt: str, name: str, placeholder: str = "x") -> str:
    """``prompt`` with its last whole-word ``placeholder`` replaced by ``name`` (the unpatched reference run)."""
    import re

    matches = list(re.finditer(r"(?<!\w)" + re.escape(placeholder) + r"(?!\w)", prompt))
    if not matches:
        raise PatchscopesError(f"the description prompt has no placeholder {placeholder!r}")
    last = matches[-1]
    return prompt[: last.start()] + name + prompt[last.end():]


def description_samples(
    source_model: LanguageModel,
    entities: Sequence[Entity],
    pairs: Sequence[tuple[int, int, object | None]],
    *,
    target_model: LanguageModel | None = None,
    prompt: str = ENTITY_DESCRIPTION_PROMPT,
    max_new_tokens: int = 50,
    reference: str = "file",
    sbert: bool | SentenceEmbedder = True,
    options: RunOptions | None = None,
    **legacy: Any,
) -> pd.DataFrame:
    """Describe every entity at every (l, l*, f) pair and score the descriptions.

    Args:
        source_model: M, which reads the entity's name.
        entities: The entities (see :func:`patchscopes.data.entities.select_entities`).
        pairs: ``(source layer l, target layer l*, mapping f or None)`` triples.
        target_model: M*, if not the source model.
        prompt: The target prompt; it must contain the placeholder ``x`` (the patch goes on its last token).
        max_new_tokens: The most tokens generated.
        reference: ``"file"`` (each entity's own reference; entities without one are not scored) or
            ``"self"`` (the target model's own description of the name, unpatched).
        sbert: Compute the SBERT cosine (``True``), reuse an embedder, or skip it (``False``: NaN).
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`: engine, budget, progress bars,
            executor, run directory); 0.2's separate ``engine=``... keywords still work, with a warning.

    Returns:
        One row per (entity, pair), columns :data:`SAMPLE_COLUMNS`; ``attrs`` holds the settings.

    Raises:
        PatchscopesError: No entity or pair, a prompt without placeholder, an unknown reference kind, or an
            invalid layer or mapping (checked before anything runs).
    """
    options = run_options(options, legacy, "description_samples")
    store = open_run_dir(options.run_dir, command="description_samples",
                         models=[source_model, target_model or source_model], data=entities,
                         settings=settings_of(locals(), exclude=("source_model", "target_model", "entities")))
    start = time.perf_counter()
    entities = list(entities)
    if not entities:
        raise PatchscopesError("no entities to describe")
    if not pairs:
        raise PatchscopesError("no layers to describe the entities at")
    if reference not in REFERENCE_KINDS:
        raise PatchscopesError(f"unknown reference {reference!r}", hint=f"use one of {', '.join(REFERENCE_KINDS)}")
    if not contains_placeholder(prompt, "x"):
        raise PatchscopesError(f"the description prompt {prompt!r} has no placeholder 'x'",
                               hint="end the prompt with ', x' like the paper's")
    if max_new_tokens < 1:
        raise PatchscopesError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    target = target_model or source_model
    other = target if target is not source_model else None
    readout = Generate(max_new_tokens=max_new_tokens, stop=DESCRIPTION_STOP)
    scopes = []
    keys = []
    for entity in entities:
        if not entity.name.strip():
            raise PatchscopesError(f"an entity has an empty name ({entity.origin or 'no origin'})")
        for layer, target_layer, mapping in pairs:
            scopes.append(Patchscope(Source(entity.name, layer, -1, model=source_model),
                                     Target(prompt, target_layer, "x", mapping=mapping, model=other), readout))
            keys.append((entity, layer, target_layer))
    options = options.with_(run_dir=store)
    results = run(scopes, source_model, **options.run_kwargs())

    references: dict[str, str | None]
    if reference == "self":
        references = self_descriptions(target, [e.name for e in entities], prompt=prompt,
                                       max_new_tokens=max_new_tokens, options=options.with_(progress=False))
    else:
        references = {e.name: e.reference for e in entities}
    generated = [r.generated_text or "" for r in results]
    descriptions = [clean_description(g) for g in generated]
    refs = [references[e.name] for e, _, _ in keys]
    scores = score_descriptions(descriptions, refs, sbert=sbert)
    rows = []
    for k, ((entity, _, _), result) in enumerate(zip(keys, results)):
        rows.append((entity.name, entity.group, entity.popularity, result.source_layer, result.target_layer,
                     result.mapping, generated[k], descriptions[k], refs[k],
                     reference if refs[k] is not None else None,
                     scores["rougeL"][k], scores["rouge1"][k], scores["sbert"][k]))
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    frame.attrs.update(
        model=source_model.name, target_model=target.name, prompt=prompt, max_new_tokens=max_new_tokens,
        reference=reference, entities=len(entities), scored_entities=sum(references[e.name] is not None
                                                                          for e in entities),
        pairs=[(int(a), int(b)) for a, b, _ in pairs], sbert=bool(sbert), engine=options.engine,
        seconds=round(time.perf_counter() - start, 1),
    )
    return frame


def self_descriptions(
    model: LanguageModel,
    names: Sequence[str],
    *,
    prompt: str = ENTITY_DESCRIPTION_PROMPT,
    max_new_tokens: int = 50,
    options: RunOptions | None = None,
    **legacy: Any,
) -> dict[str, str]:
    """The model's own description of each name: ``prompt`` with the name in place of ``x``, unpatched
    (``options``: how the runs run, :class:`~patchscopes.runs.RunOptions`).

    Each run is an identity patch (the last layer's state at the last token written back over itself), which
    leaves the run as it is and lets the batched engine run all names together.
    """
    options = run_options(options, legacy, "self_descriptions")
    readout = Generate(max_new_tokens=max_new_tokens, stop=DESCRIPTION_STOP)
    last = model.num_layers - 1
    unique = list(dict.fromkeys(names))
    scopes = []
    for name in unique:
        text = self_prompt(prompt, name)
        scopes.append(Patchscope(Source(text, last, -1), Target(text, last, -1), readout))
    results = run(scopes, model, **options.run_kwargs())
    return {name: clean_description(r.generated_text or "") for name, r in zip(unique, results)}


def describe_entities(
    model: LanguageModel,
    entities: Sequence[Entity],
    *,
    layers: str | int | Sequence[int] | None = DEFAULT_LAYERS,
    **kwargs,
) -> pd.DataFrame:
    """Experiment 3: describe each entity from its hidden state at each layer l (l* = l, f = identity).

    Args:
        model: The model (source and target).
        entities: The entities.
        layers: Source layers (a SPEC; default ``None``: the paper's first ten layers, or all of a smaller model).
        **kwargs: The options of :func:`description_samples` (``reference``, ``sbert``, ``max_new_tokens``...).

    Returns:
        One row per (entity, layer); see :func:`description_samples`.

    Example:
        >>> from patchscopes.data.entities import read_entities, select_entities
        >>> chosen = select_entities(read_entities("wikides.json"), 50)
        >>> samples = describe_entities(model, chosen, layers="0:10")
        >>> summarize_descriptions(samples)
    """
    if layers is None:
        layer_list = list(range(min(FIRST_LAYERS, model.num_layers)))
    else:
        layer_list = parse_spec(layers, model.num_layers, what="layer")
    return description_samples(model, entities, [(layer, layer, None) for layer in layer_list], **kwargs)


def summarize_descriptions(samples: pd.DataFrame) -> pd.DataFrame:
    """Mean scores per popularity group and (l, l*) pair, with standard errors; an ``all`` group pools them.

    Returns:
        Columns ``group, layer, target_layer, rougeL, rouge1, sbert, rougeL_sem, rouge1_sem, sbert_sem, n,
        scored, empty`` (``n`` descriptions, ``scored`` of them against a reference, ``empty`` the share of
        empty descriptions). Scores are NaN where nothing was scored.
    """
    groups = list(dict.fromkeys(samples["group"]))
    frames = [(g, samples[samples["group"] == g]) for g in groups]
    if len(groups) > 1:
        frames.append(("all", samples))
    records = []
    for group, part in frames:
        for (layer, target_layer), cell in part.groupby(["layer", "target_layer"], sort=True):
            record = {"group": group, "layer": int(layer), "target_layer": int(target_layer)}
            for score in SCORES:
                values = cell[score].dropna()
                record[score] = float(values.mean()) if len(values) else math.nan
                record[f"{score}_sem"] = (float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1
                                          else math.nan)
            record["n"] = len(cell)
            record["scored"] = int(cell["rougeL"].notna().sum())
            record["empty"] = float((cell["description"] == "").mean())
            records.append(record)
    columns = ["group", "layer", "target_layer", *SCORES, *(f"{s}_sem" for s in SCORES), "n", "scored", "empty"]
    frame = pd.DataFrame(records, columns=columns)
    frame.attrs.update(samples.attrs)
    return frame


def description_examples(samples: pd.DataFrame, per_group: int = 2) -> pd.DataFrame:
    """A few entities' descriptions at every layer, like the paper's Table 3.

    Takes the first ``per_group`` entities of each group (preferring those with a reference) and returns one
    row per layer pair with a column per entity (its description), plus a ``reference`` row.
    """
    names: list[str] = []
    for _, part in samples.groupby("group", sort=False):
        ranked = part.drop_duplicates("entity")
        ranked = pd.concat([ranked[ranked["reference"].notna()], ranked[ranked["reference"].isna()]])
        names += ranked["entity"].head(per_group).tolist()
    chosen = samples[samples["entity"].isin(names)].copy()
    chosen["pair"] = [f"{a}" if a == b else f"{a}→{b}" for a, b in zip(chosen["layer"], chosen["target_layer"])]
    table = chosen.pivot_table(index=["layer", "target_layer", "pair"], columns="entity", values="description",
                               aggfunc="first").reset_index(level=[0, 1], drop=True)[names]
    refs = chosen.drop_duplicates("entity").set_index("entity")["reference"]
    table.loc["reference"] = [refs.get(n) if isinstance(refs.get(n), str) else "" for n in names]
    table.index.name = "layer"
    return table


_GROUP_COLORS = {"rare": "#d62728", "popular": "#1f77b4", "all": "#555555"}
_SCORE_TITLES = {"rougeL": "RougeL", "rouge1": "Rouge1", "sbert": "SBERT cosine"}


def description_figure(summary: pd.DataFrame, *, title: str | None = None):
    """The paper's Figure 3: RougeL, Rouge1 and SBERT against the source layer, one line per popularity group,
    with a band of ±1 standard error.

    Returns:
        A plotly figure (save it with :func:`patchscopes.plots.save_figure`).
    """
    from plotly.subplots import make_subplots


    fig = make_subplots(rows=1, cols=3, subplot_titles=[_SCORE_TITLES[s] for s in SCORES], horizontal_spacing=0.07)
    groups = list(dict.fromkeys(summary["group"]))
    if len(groups) > 1 and "all" in groups:
        groups.remove("all")  # the pooled line would hide the contrast the figure is about
    for group in groups:
        part = summary[summary["group"] == group].sort_values("layer")
        color = _GROUP_COLORS.get(group, "#2ca02c")
        n_entities = int(part["n"].max()) if len(part) else 0
        label = f"{group} ({n_entities} entities)"
        for col, score in enumerate(SCORES, start=1):
            add_band_line(fig, part["layer"], part[score], part[f"{score}_sem"], color=color, name=label, group=group,
                          metric=score, row=1, col=col, show_legend=col == 1, alpha=0.18)
    attrs = summary.attrs
    if title is None:
        title = f"Entity description from layer l (l* = l) · {attrs.get('model', '')}"
        if attrs.get("reference") == "self":
            title += " · scored against the model's own description"
    fig.update_xaxes(title_text="source layer l", dtick=1)
    fig.update_layout(title=title, template="plotly_white", width=1200, height=420,
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0.5, xanchor="center"),
                      margin=dict(l=50, r=20, t=70, b=90))
    return fig
