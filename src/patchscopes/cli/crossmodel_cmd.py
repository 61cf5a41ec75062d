"""``patchscopes fit-map`` and ``patchscopes eval cross-model``: the paper's Experiment 4 between any two models.

``fit-map`` fits affine maps from a source model's layers to a target model's layers on the ``fit`` part of
some text, at positions where both tokenizers have read the same text (see :mod:`patchscopes.lenses.cross_model`),
and saves them in one safetensors file. ``eval cross-model`` evaluates them on the ``eval`` part of the text
(next-token Precision@1 and surprisal over (l, l*), next to the same-model token identity) and, with
``--entities``, describes entities across the models.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, eval_app, write_json, wrote
from patchscopes.cli.eval_entities_cmd import (
    ENTITIES_HELP,
    NoSbertOption,
    check_entity_options,
    clean_records,
    examples_table,
    reference_note,
    reference_option,
    scores_table,
)
from patchscopes.cli.lens_cmd import eval_documents, fit_documents
from patchscopes.data.entities import read_entities, select_entities
from patchscopes.data.text import DEFAULT_EVAL_FRACTION
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.cross_model import (
    CROSS_METHODS,
    cross_model_descriptions,
    cross_model_figure,
    cross_model_samples,
    summarize_cross_descriptions,
    summarize_cross_model,
)
from patchscopes.lenses import CrossModelMap, fit_cross_model_map, map_summary
from patchscopes.plots import save_figure


def default_map_path(source: str, target: str) -> Path:
    """``maps/<source>-to-<target>.safetensors``, the names made safe for a file name."""

    def stem(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name if "/" in name else name).strip("-") or "model"

    return Path("maps") / f"{stem(source)}-to-{stem(target)}.safetensors"


SourceModelOption = Annotated[
    str, typer.Option("--source-model", "-a", metavar="NAME", help=f"Model A. {opt.MODEL_HELP}")
]
TargetModelOption = Annotated[
    str, typer.Option("--target-model", "-b", metavar="NAME", help=f"Model B. {opt.MODEL_HELP}")
]
WindowOption = opt.max_tokens_option("Window length in A's tokens.")


@app.command("fit-map", short_help="Fit affine maps from model A's layers to model B's.")
@opt.runtime_options(engine=False)
@opt.run_options(workers=False)
def fit_map_command(
    source_model: SourceModelOption,
    target_model: TargetModelOption,
    text: opt.TextOption,
    layers: opt.layers_option("A's layers l: 'all', '0,5,10', '0:30:3'."),
    target_layers: opt.layers_option("B's layers l*: 'all', '0:18:3'.", "--target-layers", "-t"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE", show_default=False,
                                  help="The map file to write (.safetensors).  [default: maps/A-to-B.safetensors]")
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", metavar="N", callback=opt.at_least(2), help="Aligned positions to fit on.")
    ] = 20000,
    ridge: opt.RidgeOption = 0.0,
    max_tokens: WindowOption = 64,
    eval_fraction: opt.eval_fraction_option("Share of documents held out (the same split as `eval cross-model`).")
    = DEFAULT_EVAL_FRACTION,
    seed: opt.seed_option("the window order") = 0,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Fit affine maps from A's layer l to B's layer l* (least squares with bias) and save them in one file.

    Examples:

    \b
      patchscopes fit-map -a smollm2-135m -b gemma3-270m --text wiki.txt \\
          --layers 0:30:3 --target-layers 0:18:3
    """
    arguments = dict(locals())
    if out is not None and out.suffix.lower() != ".safetensors":
        raise PatchscopesError(f"--out {out}: the file name must end in .safetensors")
    fit_docs, split = fit_documents(text, eval_fraction)
    out = out or default_map_path(source_model, target_model)
    opt.check_output_paths(None, None, files={"--out": out})
    a = runtime.load(source_model)
    b = runtime.load(target_model)
    cmap = fit_cross_model_map(a, b, fit_docs, layers=layers, target_layers=target_layers, samples=samples,
                               ridge=ridge, max_tokens=max_tokens, seed=seed,
                               extra_config={"split": split},
                               options=runtime.options(store=runs.open("fit-map", arguments, runtime, [a, b])))
    cmap.save(out)
    console.print(Text(map_summary(cmap)), soft_wrap=True)
    wrote("map", f"{out} ({cmap.config.get('seconds')} s)")


def next_token_table(summary, *, title: str) -> Table:
    """Cross-model Precision@1 as a grid over (l, l*), with the same-model and B's own columns."""
    table = Table(title=Text(title), title_justify="left")
    table.add_column("l \\ l*", justify="right", style="bold", no_wrap=True)
    cross = summary[summary["method"] == "cross-model"]
    targets = sorted(cross["target_layer"].unique()) if len(cross) else []
    for t in targets:
        table.add_column(str(t), justify="right", no_wrap=True)
    ti = summary[summary["method"] == "token-identity"].set_index("layer")
    if len(ti):
        table.add_column(Text("same model\ntoken identity"), justify="right", no_wrap=True)
    by = {(r.layer, r.target_layer): r for r in cross.itertuples()}
    layers = sorted(set(cross["layer"]) | set(ti.index))
    for layer in layers:
        cells = [str(layer)]
        for t in targets:
            r = by.get((layer, t))
            cells.append("" if r is None else f"{r.precision_at_1:.2f} · {r.surprisal:.1f}")
        if len(ti):
            cells.append(f"{ti.loc[layer, 'precision_at_1']:.2f} · {ti.loc[layer, 'surprisal']:.1f}"
                         if layer in ti.index else "")
        table.add_row(*cells)
    return table


@eval_app.command("cross-model", short_help="Exp. 4: read model A's hidden states through model B.")
@opt.runtime_options()
@opt.run_options()
def cross_model_command(
    map_path: Annotated[
        Path, typer.Option("--map", metavar="FILE", help="A map file from `patchscopes fit-map`.")
    ],
    text: Annotated[
        list[Path] | None, typer.Option("--text", metavar="FILE", help=opt.TEXT_HELP + " Evaluates on the eval part "
                                        "(as fit-map splits).")
    ] = None,
    entities: Annotated[
        Path | None, typer.Option("--entities", "-e", metavar="FILE", help=ENTITIES_HELP)
    ] = None,
    source_model: Annotated[
        str | None, typer.Option("--source-model", "-a", metavar="NAME", show_default=False,
                                 help=f"Model A. {opt.MODEL_HELP}  [default: the map's]")
    ] = None,
    target_model: Annotated[
        str | None, typer.Option("--target-model", "-b", metavar="NAME", show_default=False,
                                 help=f"Model B. {opt.MODEL_HELP}  [default: the map's]")
    ] = None,
    layers: opt.layers_option("Source layers l (those the map has).  [default: all]", optional=True) = None,
    target_layers: opt.layers_option("Target layers l* (those the map has).  [default: all]", "--target-layers", "-t",
                                 optional=True) = None,
    samples: Annotated[
        int, typer.Option("--samples", "-n", metavar="N", callback=opt.at_least(1),
                          help="Positions (one per window).")
    ] = 200,
    methods: opt.methods_option(f"Next-token methods, comma-separated: {', '.join(CROSS_METHODS)}.  "
                                "[default: cross-model,token-identity,target-own]") = None,
    entity_n: Annotated[
        int, typer.Option("--entity-n", metavar="N", callback=opt.at_least(1), help="Entities to describe.")
    ] = 20,
    entity_layers: opt.layers_option("Source layers for the descriptions.  [default: --layers]", "--entity-layers",
                                 optional=True) = None,
    entity_target_layers: opt.layers_option("Target layers for the descriptions.  [default: --target-layers]",
                                        "--entity-target-layers", optional=True) = None,
    split: Annotated[
        str, typer.Option("--split", metavar="NAME", help="Popularity split: extremes, median or random.")
    ] = "extremes",
    reference: reference_option("file: the file's references; self: B's own description of the name.") = "file",
    max_new_tokens: opt.max_new_tokens_option() = 50,
    no_sbert: NoSbertOption = False,
    max_tokens: WindowOption = 64,
    eval_fraction: opt.eval_fraction_option() = DEFAULT_EVAL_FRACTION,
    seed: opt.seed_option("the samples and entities") = 0,
    json_path: opt.json_option("the results") = None,
    plot: opt.PlotOption = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Read model A's hidden states through model B with a fitted map (paper, Exp. 4).

    Next-token Precision@1 and surprisal over (l, l*) on --text, next to A's own token-identity result; entity
    descriptions across the models with --entities.

    Examples:

    \b
      patchscopes eval cross-model --text wiki.txt \\
          --map maps/smollm2-135m-to-gemma3-270m.safetensors
      patchscopes eval cross-model --map MAP --entities wikides.json \\
          --entity-layers 0,3,6 --plot x.html
    """
    arguments = dict(locals())
    if not text and entities is None:
        raise PatchscopesError("nothing to evaluate", hint="give --text for next-token prediction and/or --entities")
    check_entity_options(split, reference)
    opt.check_output_paths(json_path, plot)
    if plot is not None and not text:
        raise PatchscopesError("the cross-model figure needs the next-token results", hint="give --text too")
    method_list = opt.parse_methods(methods)
    for m in method_list or []:
        if m not in CROSS_METHODS:
            raise PatchscopesError(f"unknown method {m!r}", hint=f"use some of {', '.join(CROSS_METHODS)}")
    cmap = CrossModelMap.load(map_path)
    eval_docs = eval_documents(text, eval_fraction) if text else None
    found = read_entities(entities) if entities is not None else None
    if found is not None:
        note = reference_note(found, reference)
        if note:
            console.print(Text(note, style="yellow"), soft_wrap=True)
    start = time.perf_counter()
    a = runtime.load(source_model or cmap.source_name)
    b = runtime.load(target_model or cmap.target_name)
    cmap.check_models(a, b)
    store = runs.open("eval cross-model", arguments, runtime, [a, b])
    console.print(Text(map_summary(cmap), style="dim"), soft_wrap=True)
    output: dict = {"source_model": a.name, "target_model": b.name, "map": str(map_path),
                    "map_data_fingerprint": cmap.config.get("data", {}).get("fingerprint")}
    summary = entity_summary = None
    if eval_docs is not None:
        frame = cross_model_samples(a, b, cmap, eval_docs, samples=samples, seed=seed, layers=layers,
                                    target_layers=target_layers, methods=method_list, max_tokens=max_tokens,
                                    options=runtime.options(runs, store))
        summary = summarize_cross_model(frame)
        attrs = frame.attrs
        console.print(next_token_table(summary, title=f"next-token Precision@1 · surprisal (nats): {a.name} read "
                                       f"through {b.name}"))
        own = summary[summary["method"] == "target-own"]
        if len(own):
            console.print(Text(f"{b.name}'s own prediction agrees with {a.name}'s on "
                               f"{own['precision_at_1'].iloc[0]:.3f} of the positions (tokens compared as text)"),
                          soft_wrap=True)
        cross = summary[summary["method"] == "cross-model"]
        if len(own) and len(cross):
            same = cross["same_as_target_own"]
            console.print(Text(f"the patched {b.name} predicts what it predicts unpatched on {same.min():.3f} to "
                               f"{same.max():.3f} of the positions, depending on (l, l*)"), soft_wrap=True)
        console.print(Text(f"{attrs['samples']} positions (one per window of ≤{max_tokens} tokens of A, where both "
                           f"models have read the same text) from {attrs['documents']} eval documents; "
                           f"{attrs['excluded_fit_documents']} documents the map was fitted on left out",
                           style="dim"), soft_wrap=True)
        output["next_token"] = clean_records(summary)
        output["next_token_settings"] = {k: attrs[k] for k in ("samples", "documents", "windows", "seed",
                                                               "max_tokens", "methods")}
    if found is not None:
        chosen = select_entities(found, entity_n, split=split, seed=seed)
        desc = cross_model_descriptions(
            a, b, cmap, chosen, layers=entity_layers or layers, target_layers=entity_target_layers or target_layers,
            reference=reference, sbert=not no_sbert, max_new_tokens=max_new_tokens,
            options=runtime.options(runs, store),
        )
        entity_summary = summarize_cross_descriptions(desc)
        cross = entity_summary[entity_summary["method"] == "cross-model"]
        same = entity_summary[entity_summary["method"] == "same-model"]
        console.print(scores_table(cross, title=f"entity description: {a.name} read through {b.name}",
                                   pair_label=True))
        console.print(scores_table(same, title=f"entity description: {a.name} alone (l* = l)"))
        console.print(examples_table(desc[desc["method"] == "cross-model"], 1,
                                     title="example descriptions across models"))
        output["entities"] = clean_records(desc)
        output["entity_summary"] = clean_records(entity_summary)
    seconds = time.perf_counter() - start
    output["seconds"] = round(seconds, 1)
    console.print(Text(f"{seconds:.0f} s", style="dim"))
    if json_path is not None:
        write_json(output, json_path)
        wrote("JSON", json_path)
    if plot is not None and summary is not None:
        save_figure(cross_model_figure(summary, entity_summary=entity_summary), plot)
        wrote("figure", plot)
