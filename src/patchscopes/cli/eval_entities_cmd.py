"""``patchscopes eval entities``: the paper's Experiment 3 (entity description) on any causal LM.

Reads an entity file (PopQA rows or questions, WikiDes JSON lines, or a plain ``entity`` file; see
:mod:`patchscopes.data.entities`), describes each chosen entity from its hidden state at each layer, scores the
descriptions against the references, prints per-layer scores by popularity group and a few example
descriptions per layer (the paper's Table 3), and writes ``--json`` records and a ``--plot`` figure (Figure 3).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import console, eval_app, write_json, wrote
from patchscopes.data.entities import SPLITS, EntitySet, read_entities, select_entities
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.entities import (
    DEFAULT_LAYERS,
    REFERENCE_KINDS,
    describe_entities,
    description_examples,
    description_figure,
    summarize_descriptions,
)
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure, show_token

ENTITIES_HELP = ("An entity file: PopQA rows or questions ('subj', 's_pop'), WikiDes JSON lines ('source', "
                 "'target'), or a file with 'entity' [, 'reference', 'popularity'].")
EntitiesOption = Annotated[Path, typer.Option("--entities", "-e", metavar="FILE", help=ENTITIES_HELP)]
NoSbertOption = Annotated[bool, typer.Option("--no-sbert", help="Skip the SBERT score.")]


def reference_option(help: str) -> Any:
    """``--reference KIND``: what the descriptions are scored against (file or self)."""
    return Annotated[str, typer.Option("--reference", metavar="KIND", help=help)]


def check_entity_options(split: str, reference: str) -> None:
    """Refuse an unknown ``--split`` or ``--reference``."""
    opt.check_choice(split, SPLITS, "--split")
    opt.check_choice(reference, REFERENCE_KINDS, "--reference")


def clean_records(frame: pd.DataFrame, extra: dict | None = None) -> list[dict]:
    """Records of ``frame`` with NaN as ``None`` and ``extra`` fields added."""
    out = []
    for rec in frame.to_dict(orient="records"):
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
                 for k, v in rec.items()}
        out.append({**clean, **(extra or {})})
    return out


def reference_note(found: EntitySet, reference: str) -> str | None:
    """A warning when the entities cannot be scored as asked, else ``None``."""
    if reference == "file" and found.with_reference == 0:
        return (f"{Path(found.path).name} has no reference descriptions ({found.kind}): the descriptions are "
                "generated but not scored. Use --reference self to score them against the model's own "
                "description of each name, or a WikiDes file for Wikidata descriptions.")
    return None


def scores_table(summary: pd.DataFrame, *, title: str, pair_label: bool = False) -> Table:
    """Layers as rows; per group, RougeL · Rouge1 · SBERT (and how many were scored)."""
    table = Table(title=Text(title), title_justify="left")
    table.add_column("l → l*" if pair_label else "layer", justify="right", style="bold", no_wrap=True)
    groups = list(dict.fromkeys(summary["group"]))
    for g in groups:
        n = int(summary[summary["group"] == g]["n"].max())
        table.add_column(Text(f"{g} (n={n})\nRougeL · Rouge1 · SBERT"), justify="right", no_wrap=True)
    by = {(r.group, r.layer, r.target_layer): r for r in summary.itertuples()}
    pairs = sorted({(r.layer, r.target_layer) for r in summary.itertuples()})
    for layer, target_layer in pairs:
        cells = [f"{layer} → {target_layer}" if pair_label else str(layer)]
        for g in groups:
            r = by.get((g, layer, target_layer))
            if r is None or r.scored == 0:
                cells.append("not scored" if r is not None else "")
                continue
            sbert = "–" if math.isnan(r.sbert) else f"{r.sbert:.3f}"
            cells.append(f"{r.rougeL:.3f} · {r.rouge1:.3f} · {sbert}")
        table.add_row(*cells)
    return table


def examples_table(samples: pd.DataFrame, per_group: int, *, title: str) -> Table:
    """The paper's Table 3: a few entities' descriptions at every layer, and their references."""
    examples = description_examples(samples, per_group=per_group)
    table = Table(title=Text(title), title_justify="left", show_lines=False)
    table.add_column("layer", justify="right", style="bold", no_wrap=True)
    for name in examples.columns:
        table.add_column(Text(str(name)), overflow="fold", max_width=32)
    for label, row in examples.iterrows():
        style = "dim" if label == "reference" else None
        table.add_row(str(label), *[Text(show_token(v) if isinstance(v, str) and v else "∅", style=style or "")
                                     for v in row.values])
    return table


@eval_app.command("entities", short_help="Exp. 3: describe entities from their early-layer states.")
@opt.runtime_options()
@opt.run_options()
def entities_command(
    entities: EntitiesOption,
    model: opt.ModelOption = DEFAULT_MODEL,
    layers: opt.layers_option("Source layers l (l* = l); default: the first 10.", optional=True) = DEFAULT_LAYERS,
    n: Annotated[
        int, typer.Option("--n", "-n", metavar="N", callback=opt.at_least(1),
                          help="Entities to describe; with popularities, half rare and half popular.")
    ] = 100,
    split: Annotated[
        str, typer.Option("--split", metavar="NAME", help="extremes: the n/2 least and n/2 most popular (the "
                          "paper); median: n/2 below and above the median; random: n at random, one group.")
    ] = "extremes",
    reference: reference_option("file: the file's reference descriptions; self: the model's own description "
                                "when it reads the name (a consistency check, not truth).") = "file",
    max_new_tokens: opt.max_new_tokens_option() = 50,
    no_sbert: NoSbertOption = False,
    examples: Annotated[
        int, typer.Option("--examples", metavar="N", callback=opt.at_least(0),
                          help="Entities per group in the table of example descriptions.")
    ] = 2,
    seed: opt.seed_option("the random draws of entities") = 0,
    json_path: opt.json_option("one record per (entity, layer)") = None,
    plot: opt.PlotOption = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Describe entities from their hidden states in the first layers and score the descriptions (paper, Exp. 3).

    Examples:

    \b
      patchscopes eval entities --n 100 \\
          --entities wikides/phase2/generated_validation_para_256_random.json
      patchscopes eval entities --entities popqa/popqa_sample_2000.json \\
          --reference self --plot fig3.html
    """
    arguments = dict(locals())
    check_entity_options(split, reference)
    opt.check_output_paths(json_path, plot)
    found = read_entities(entities)
    note = reference_note(found, reference)
    if note and plot is not None:
        raise PatchscopesError(f"nothing to plot: {note}")
    chosen = select_entities(found, n, split=split, seed=seed)
    start = time.perf_counter()
    lm = runtime.load(model)
    console.print(Text(found.summary(), style="dim"), soft_wrap=True)
    if note:
        console.print(Text(note, style="yellow"), soft_wrap=True)
    store = runs.open("eval entities", arguments, runtime, [lm], data=chosen)
    samples = describe_entities(lm, chosen, layers=layers, reference=reference, sbert=not no_sbert,
                                max_new_tokens=max_new_tokens, options=runtime.options(runs, store))
    seconds = time.perf_counter() - start
    summary = summarize_descriptions(samples)
    groups = ", ".join(f"{g}: {c}" for g, c in samples.drop_duplicates("entity")["group"].value_counts().items())
    console.print(scores_table(summary, title=f"entity description · {lm.name} · scored against "
                               f"{'the model’s own descriptions' if reference == 'self' else 'the references'}"))
    if examples:
        console.print(examples_table(samples, examples, title="example descriptions (Table 3)"))
    pops = [e.popularity for e in chosen if e.popularity is not None]
    pop_text = ""
    if pops and split != "random":
        rare = [e.popularity for e in chosen if e.group == "rare"]
        popular = [e.popularity for e in chosen if e.group == "popular"]
        if rare and popular:
            pop_text = (f"; popularity (s_pop) rare {min(rare):g}..{max(rare):g}, "
                        f"popular {min(popular):g}..{max(popular):g}")
    console.print(Text(
        f"{len(chosen)} entities ({groups}){pop_text}; {samples.attrs['scored_entities']} scored; "
        f"{len(samples)} descriptions of ≤{max_new_tokens} tokens cut at the first ',' or newline; "
        f"{seconds:.0f} s", style="dim"), soft_wrap=True)
    if json_path is not None:
        write_json(clean_records(samples, {"model": lm.name}), json_path)
        wrote("JSON", json_path)
    if plot is not None:
        save_figure(description_figure(summary), plot)
        wrote("figure", plot)
