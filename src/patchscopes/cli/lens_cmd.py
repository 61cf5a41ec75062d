"""``patchscopes fit-lens``: fit one map per layer l → last layer on the fit part of some text, and save it.

The documents of the text files are split by a hash of each document (see :mod:`patchscopes.data.text`);
the lens is fitted on the ``fit`` part only, so ``patchscopes eval next-token`` on the same files evaluates on
documents the lens never saw.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.text import Text

from patchscopes.cli.app import app, console, handle_errors, wrote
from patchscopes.data.text import DEFAULT_EVAL_FRACTION, read_documents, split_documents
from patchscopes.errors import PatchscopesError
from patchscopes.lenses import LENS_KINDS, TunedLensSettings, fit_affine_lens, lens_summary, train_tuned_lens
from patchscopes.models import DEFAULT_MODEL, load_model

TEXT_HELP = ("Plain text files, one document per paragraph (paragraphs separated by blank lines; WikiText "
             "headings are skipped). Repeat the option for several files.")


def default_lens_dir(model: str, kind: str) -> Path:
    """``lenses/<model>-<kind>``, the model's name made safe as a folder name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if "/" in model else model).strip("-") or "model"
    return Path("lenses") / f"{stem}-{kind}"


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads (fewer can be faster when other programs load the machine)."""
    if threads is not None:
        if threads < 1:
            raise PatchscopesError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


@app.command("fit-lens")
@handle_errors
def fit_lens_command(
    text: Annotated[list[Path], typer.Option("--text", help=TEXT_HELP)],
    model: Annotated[
        str, typer.Option("--model", "-m", help="An embedded alias, a .gguf file, a model folder or a hub id.")
    ] = DEFAULT_MODEL,
    kind: Annotated[
        str, typer.Option("--kind", help="affine: closed-form least squares with bias (the paper's baseline); "
                          "tuned: translators trained with a KL loss to the final distribution (Belrose et al.).")
    ] = "affine",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The lens folder to write.", show_default="lenses/MODEL-KIND")
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=1, help="Hidden-state vectors to fit on (every text position of shuffled "
                     "windows).", show_default="20000 affine, 8192 tuned"),
    ] = None,
    ridge: Annotated[float, typer.Option("--ridge", min=0.0, help="Ridge term λ of the affine fit.")] = 0.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=2, help="Window length in tokens.")] = 64,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", min=0.0, max=1.0,
                            help="Share of documents held out for evaluation (the same split as `eval next-token`).")
    ] = DEFAULT_EVAL_FRACTION,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the windows and training batches.")] = 0,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Tuned lens: optimizer steps.")] = 150,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tuned lens: positions per step.")] = 128,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Tuned lens: learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="Tuned lens: adam or sgd (Nesterov).")] = "adam",
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Tuned lens: checkpoint file, resumed from if present.",
                     show_default="OUT/checkpoint.safetensors"),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1...")] = "cpu",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.", show_default="float32 on CPU")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")] = None,
) -> None:
    """Fit a lens (one map per layer l → last layer) and save it as lens.safetensors + lens.json.

    Examples:

        patchscopes fit-lens --model smollm2-135m --text wiki.txt --kind affine --out lenses/smollm2-affine

        patchscopes fit-lens --model smollm2-135m --text wiki.txt --kind tuned --steps 200
    """
    if kind not in LENS_KINDS:
        raise PatchscopesError(f"unknown lens kind {kind!r}", hint=f"use one of {', '.join(LENS_KINDS)}")
    settings = None
    if kind == "tuned":
        settings = TunedLensSettings(steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                     samples=samples or TunedLensSettings.samples, max_tokens=max_tokens, seed=seed)
    set_threads(threads)
    fit_docs, split = fit_documents(text, eval_fraction)
    out = out or default_lens_dir(model, kind)
    lm = load_model(model, device=device, dtype=dtype)
    if kind == "affine":
        lens = fit_affine_lens(lm, fit_docs, ridge=ridge, samples=samples or 20000, max_tokens=max_tokens,
                               seed=seed, progress=True, extra_config={"split": split})
    else:
        ckpt = checkpoint or (out / "checkpoint.safetensors")
        if ckpt.is_file():
            console.print(Text(f"resuming from {ckpt}"))
        lens = train_tuned_lens(lm, fit_docs, settings=settings, checkpoint=ckpt, progress=True,
                                extra_config={"split": split})
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
