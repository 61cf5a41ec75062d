"""``patchscopes fit-future-lens`` and ``patchscopes eval future``: the future lens of Pal et al. (2023).

``fit-future-lens`` fits the linear maps and trains the learned prompts on the fit part of some text
(the split ``fit-lens`` uses), with resumable safetensors checkpoints; ``eval future`` measures Precision@1 of
the linear, fixed-prompt and learned-prompt methods per layer and offset on the evaluation part.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, eval_app, layer_list, write_json, wrote
from patchscopes.cli.lens_cmd import eval_documents, fit_documents
from patchscopes.data.text import DEFAULT_EVAL_FRACTION
from patchscopes.experiments.future_lens import (
    FUTURE_METHODS,
    METHOD_LABELS,
    FutureResults,
    evaluate_future,
    future_figure,
)
from patchscopes.lenses.future import (
    CHECKPOINT_FILE,
    FIXED_PROMPT,
    RUN_CHECKPOINT_FILE,
    FutureLens,
    PromptSettings,
    fit_future_lens,
)
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure
from patchscopes.specs import parse_spec

DEFAULT_LAYERS = "::3"
MAX_OFFSET = 63


def parse_offsets(spec: str) -> list[int]:
    """``0:4`` → ``[0, 1, 2, 3]``; offsets from 0 to :data:`MAX_OFFSET`.

    Raises:
        PatchscopesError: A malformed spec or an offset out of range.
    """
    return parse_spec(spec, MAX_OFFSET + 1, what="offset")


@app.command("fit-future-lens", short_help="Fit the future lens (linear maps, learned prompts) and save it.")
@opt.runtime_options(engine=False)
@opt.run_options(workers=False)
def fit_future_lens_command(
    text: opt.TextOption,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="The lens folder to write.")],
    model: opt.ModelOption = DEFAULT_MODEL,
    layers: opt.layers_option("Source layers l: 'all', '0,5,10', '::3'.") = DEFAULT_LAYERS,
    offsets: Annotated[str, typer.Option("--offsets", metavar="SPEC", help="Offsets N: '0:4' is 0, 1, 2, 3.")
                       ] = "0:4",
    samples: Annotated[int, typer.Option("--samples", "-n", metavar="N", callback=opt.at_least(1),
                                         help="Positions to fit on.")] = 2000,
    prompt_length: Annotated[
        int, typer.Option("--prompt-length", "-k", metavar="K", callback=opt.at_least(1),
                          help="Vectors of the learned prompt (the paper: 10).")
    ] = 10,
    steps: Annotated[
        int, typer.Option("--steps", metavar="N", callback=opt.at_least(0),
                          help="Training steps per layer of the learned prompt (0: none).")
    ] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", callback=opt.at_least(1),
                                            help="Positions per training step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", metavar="X", callback=opt.at_least(0.0),
                                      help="AdamW learning rate of the prompt.")] = 1e-2,
    ridge: opt.RidgeOption = 0.0,
    eval_fraction: opt.eval_fraction_option("Share of documents held out (the split of `fit-lens`).")
    = DEFAULT_EVAL_FRACTION,
    seed: opt.seed_option("the positions and batches") = 0,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Fit the future lens: linear maps per (layer, offset) and a learned prompt per layer (Pal et al. 2023).

    Training resumes from OUT/checkpoint.safetensors (with --run-dir, from the run directory's checkpoint)
    when it exists and matches the model, text and settings.

    Examples:

    \b
      patchscopes fit-future-lens --text wiki.txt --layers ::3 \\
          --steps 100 --out lenses/smollm2-future
    """
    arguments = dict(locals())
    offset_list = parse_offsets(offsets)
    settings = PromptSettings(prompt_length=prompt_length, steps=max(steps, 1), batch_size=batch_size, lr=lr,
                              seed=seed)
    fit_docs, split = fit_documents(text, eval_fraction)
    opt.check_output_paths(None, None, folders={"--out": out})
    lm = runtime.load(model)
    layer_ids = parse_spec(layers, lm.num_layers, what="layer")
    store = runs.open("fit-future-lens", arguments, runtime, [lm])
    ckpt = store.file(RUN_CHECKPOINT_FILE) if store is not None else out / CHECKPOINT_FILE
    if steps and ckpt.is_file():
        console.print(Text(f"resuming from {ckpt}"))
    lens = fit_future_lens(lm, fit_docs, layers=layer_ids, offsets=offset_list, samples=samples, ridge=ridge,
                           prompt=settings, train_prompts=steps > 0, checkpoint=ckpt, seed=seed,
                           extra_config={"split": split}, options=runtime.options(store=store))
    lens.save(out)
    losses = (lens.config.get("training") or {}).get("losses", {})
    trained = ", ".join(f"{layer}: {v[0]:.2f} → {v[-1]:.2f}" for layer, v in losses.items() if v)
    console.print(Text(f"future lens of {lm.name}: {len(lens.linear)} linear maps (layers {layer_list(lens.layers)}, "
                       f"offsets {layer_list(lens.offsets)}) from {lens.config['data']['samples']} positions"
                       + (f"; learned prompts of {prompt_length} vectors, KL by layer {trained}" if trained else "")),
                  soft_wrap=True)
    wrote("future lens", f"{out} ({lens.config.get('seconds')} s)")


@eval_app.command("future", short_help="Future lens: the token N positions ahead from one hidden state.")
@opt.runtime_options()
@opt.run_options()
def eval_future_command(
    text: opt.TextOption,
    model: opt.ModelOption = DEFAULT_MODEL,
    lens: Annotated[
        Path | None, typer.Option("--lens", metavar="DIR", help="A folder from `patchscopes fit-future-lens` (for "
                                  "the linear and learned methods).")
    ] = None,
    offsets: Annotated[
        str | None, typer.Option("--offsets", metavar="SPEC", show_default=False,
                                 help="Offsets N: '0:4' is 0, 1, 2, 3.  [default: the lens's, else 0:4]")
    ] = None,
    layers: opt.layers_option("Source layers.  [default: the lens's, else ::3]", optional=True) = None,
    methods: opt.methods_option(f"Comma-separated: {', '.join(FUTURE_METHODS)}.  [default: all the lens allows; "
                                "fixed without a lens]") = None,
    samples: Annotated[int, typer.Option("--samples", "-n", metavar="N", callback=opt.at_least(1),
                                         help="Positions to evaluate.")] = 200,
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", callback=opt.at_least(1),
                                       help="k of Precision@k (beside Precision@1).")] = 5,
    fixed_prompt: Annotated[str, typer.Option("--fixed-prompt", metavar="TEXT",
                                              help="The fixed method's prompt.")] = FIXED_PROMPT,
    eval_fraction: opt.eval_fraction_option() = DEFAULT_EVAL_FRACTION,
    seed: opt.seed_option("the positions") = 1,
    json_path: opt.json_option() = None,
    plot: opt.plot_option("Precision@1 per layer, a panel per N") = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Precision@1 of the token N positions ahead from one hidden state, per method, layer and N (Pal et al.).

    Examples:

    \b
      patchscopes eval future --text wiki.txt --lens lenses/smollm2-future \\
          --json future.json --plot future.html
    """
    arguments = dict(locals())
    opt.check_output_paths(json_path, plot)
    offset_list = parse_offsets(offsets) if offsets is not None else None
    method_list = opt.parse_methods(methods)
    eval_docs = eval_documents(text, eval_fraction)
    start = time.perf_counter()
    lm = runtime.load(model)
    fitted = FutureLens.load(lens, model=lm) if lens is not None else None
    layer_ids = parse_spec(layers, lm.num_layers, what="layer") if layers is not None else None
    store = runs.open("eval future", arguments, runtime, [lm])
    results = evaluate_future(lm, eval_docs, lens=fitted, layers=layer_ids, offsets=offset_list, methods=method_list,
                              samples=samples, top_k=top_k, fixed_prompt=fixed_prompt, seed=seed,
                              options=runtime.options(runs, store))
    seconds = time.perf_counter() - start
    console.print(results_table(results, title=f"future lens · {lm.name} · Precision@1 (%) by layer and N"))
    attrs = results.attrs
    console.print(Text(f"{attrs['samples']} positions from {attrs['documents']} evaluation documents; the token "
                       "N positions ahead is the model's own greedy continuation; the runs read the tokens "
                       f"between (teacher forcing); {seconds:.0f} s", style="dim"), soft_wrap=True)
    if json_path is not None:
        extra = {"model": lm.name, "seconds": round(seconds, 1)}
        write_json([{**r, **extra} for r in results.records()], json_path)
        wrote("JSON", json_path)
    if plot is not None:
        save_figure(future_figure(results), plot)
        wrote("figure", plot)


def results_table(results: FutureResults, *, title: str | None = None) -> Table:
    """Precision@1 (%) per method and layer (rows) and offset (columns)."""
    summary = results.summary()
    offsets = sorted(summary["offset"].unique()) if len(summary) else []
    table = Table(title=Text(title) if title else None, title_justify="left")
    table.add_column("method")
    table.add_column("layer", justify="right")
    for offset in offsets:
        table.add_column(f"N={offset}", justify="right")
    cells = {(r.method, r.layer, r.offset): r.precision_at_1 for r in summary.itertuples()}
    for method in FUTURE_METHODS:
        for layer in sorted({r.layer for r in summary.itertuples() if r.method == method}):
            table.add_row(METHOD_LABELS[method], str(layer),
                          *[f"{100 * cells[(method, layer, o)]:.1f}" for o in offsets])
    return table
