"""``patchscopes fit-lens``: fit one map per layer l → last layer on the fit part of some text, and save it.

The documents of the text files are split by a hash of each document (see :mod:`patchscopes.data.text`);
the lens is fitted on the ``fit`` part only, so ``patchscopes eval next-token`` on the same files evaluates on
documents the lens never saw.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, wrote
from patchscopes.data.text import DEFAULT_EVAL_FRACTION, read_documents, split_documents
from patchscopes.errors import PatchscopesError
from patchscopes.lenses import LENS_KINDS, TunedLensSettings, fit_affine_lens, lens_summary, train_tuned_lens
from patchscopes.models import DEFAULT_MODEL


def default_lens_dir(model: str, kind: str) -> Path:
    """``lenses/<model>-<kind>``, the model's name made safe as a folder name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if "/" in model else model).strip("-") or "model"
    return Path("lenses") / f"{stem}-{kind}"


@app.command("fit-lens", short_help="Fit an affine or tuned lens and save it.")
@opt.runtime_options(engine=False)
@opt.run_options(workers=False)
def fit_lens_command(
    text: opt.TextOption,
    model: opt.ModelOption = DEFAULT_MODEL,
    kind: Annotated[
        str, typer.Option("--kind", metavar="KIND", help="affine: least squares with bias (the paper's baseline); "
                          "tuned: translators trained with a KL loss (Belrose et al.).")
    ] = "affine",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="DIR", show_default=False,
                                  help="The lens folder to write.  [default: lenses/MODEL-KIND]")
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", metavar="N", callback=opt.at_least(1), show_default=False,
                     help="Hidden states to fit on (every position of shuffled windows).  [default: 20000 affine, "
                     "8192 tuned]"),
    ] = None,
    ridge: opt.RidgeOption = 0.0,
    max_tokens: opt.max_tokens_option() = 64,
    eval_fraction: opt.eval_fraction_option("Share of documents held out (the same split as `eval next-token`).")
    = DEFAULT_EVAL_FRACTION,
    seed: opt.seed_option("the windows and training batches") = 0,
    steps: Annotated[int, typer.Option("--steps", metavar="N", callback=opt.at_least(1),
                                       help="Tuned lens: optimizer steps.")] = 150,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", callback=opt.at_least(1),
                                            help="Tuned lens: positions per step.")] = 128,
    lr: Annotated[float, typer.Option("--lr", metavar="X", callback=opt.at_least(0.0),
                                      help="Tuned lens: learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", metavar="NAME",
                                           help="Tuned lens: adam or sgd (Nesterov).")] = "adam",
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", metavar="FILE", show_default=False,
                     help="Tuned lens: checkpoint, resumed from if present.  [default: "
                     "OUT/checkpoint.safetensors, or in --run-dir]"),
    ] = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Fit a lens (one map per layer l → last layer) and save it as lens.safetensors + lens.json.

    Examples:

    \b
      patchscopes fit-lens --text wiki.txt --kind affine \\
          --out lenses/smollm2-affine
      patchscopes fit-lens --text wiki.txt --kind tuned --steps 200
    """
    arguments = dict(locals())
    if kind not in LENS_KINDS:
        raise PatchscopesError(f"unknown lens kind {kind!r}", hint=f"use one of {', '.join(LENS_KINDS)}")
    settings = None
    if kind == "tuned":
        settings = TunedLensSettings(steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                     samples=samples or TunedLensSettings.samples, max_tokens=max_tokens, seed=seed)
    fit_docs, split = fit_documents(text, eval_fraction)
    out = out or default_lens_dir(model, kind)
    opt.check_output_paths(None, None, folders={"--out": out}, files={"--checkpoint": checkpoint})
    lm = runtime.load(model)
    store = runs.open("fit-lens", arguments, runtime, [lm])
    if kind == "affine":
        lens = fit_affine_lens(lm, fit_docs, ridge=ridge, samples=samples or 20000, max_tokens=max_tokens,
                               seed=seed, extra_config={"split": split},
                               options=runtime.options(store=store))
    else:
        ckpt = checkpoint or (store.file("tuned-lens-checkpoint.safetensors") if store is not None
                              else out / "checkpoint.safetensors")
        if ckpt.is_file():
            console.print(Text(f"resuming from {ckpt}"))
        lens = train_tuned_lens(lm, fit_docs, settings=settings, checkpoint=ckpt,
                                extra_config={"split": split}, options=runtime.options())
    lens.save(out)
    console.print(Text(lens_summary(lens)), soft_wrap=True)
    wrote("lens", f"{out} ({lens.config.get('seconds')} s)")


def fit_documents(text: list[Path], eval_fraction: float) -> tuple[list, dict]:
    """The fit part of the documents in ``text``, said on the console, and its split record for the saved config.

    Raises:
        PatchscopesError: No document falls in the fit part.
    """
    docs = read_documents(text)
    fit_docs, eval_docs = split_documents(docs, eval_fraction)
    if not fit_docs:
        raise PatchscopesError(
            f"no document falls in the fit part ({len(docs)} documents, eval fraction {eval_fraction})",
            hint="give more text or a smaller --eval-fraction",
        )
    console.print(Text(f"{len(docs)} documents in {len(docs.files)} file(s) ({docs.headings} headings skipped); "
                       f"fitting on {len(fit_docs)}, {len(eval_docs)} held out for evaluation"), soft_wrap=True)
    return fit_docs, {"files": [Path(f).name for f in docs.files], "part": "fit", "eval_fraction": eval_fraction}


def eval_documents(text: list[Path], eval_fraction: float) -> list:
    """The eval part of the documents in ``text`` (those a lens or map fitted on the same files never saw).

    Raises:
        PatchscopesError: No document falls in the eval part.
    """
    docs = read_documents(text)
    _, eval_docs = split_documents(docs, eval_fraction)
    if not eval_docs:
        raise PatchscopesError(f"no document falls in the eval part ({len(docs)} documents)",
                               hint="give more text or a larger --eval-fraction")
    return eval_docs
