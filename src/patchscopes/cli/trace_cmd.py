"""``patchscopes trace``: causal tracing (Meng et al. 2022) of one prompt, as patchscopes.

The computation is :func:`patchscopes.experiments.causal_tracing.causal_trace`; this module checks the
options before the model loads, prints the strongest cells and writes ``--json`` / ``--plot``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, err_console, write_json, wrote
from patchscopes.errors import PatchscopesError, check_text
from patchscopes.experiments.causal_tracing import KINDS, NOISE_KINDS, TOKEN_RANGES, causal_trace, traced_positions
from patchscopes.models import DEFAULT_MODEL
from patchscopes.plots import save_figure
from patchscopes.scope import token_span
from patchscopes.specs import looks_numeric, parse_indices


def check_subject(prompt: str, subject: str) -> None:
    """Refuse an empty subject, or one that is not in the prompt, and text that is not valid Unicode (bytes that
    are not UTF-8), before the model loads."""
    check_text(prompt, "prompt")
    check_text(subject, "subject")
    if not prompt.strip():
        raise PatchscopesError("the prompt is empty", hint='e.g. "The Eiffel Tower is located in the city of"')
    if not subject.strip():
        raise PatchscopesError("the subject is empty", hint="give --subject as it appears in the prompt")
    if subject.strip() not in prompt:
        raise PatchscopesError(f"the subject {subject!r} does not occur in the prompt {prompt!r}",
                               hint="give --subject exactly as it appears in the prompt")


def parse_token_range(text: str) -> str | tuple[int, ...] | None:
    """``--token-range``: ``all`` (``None``), ``subject_last``, or comma-separated positions such as ``0,-1``.

    Raises:
        PatchscopesError: Anything else (positions out of range are refused once the prompt is tokenized).
    """
    text = text.strip()
    if text == "all":
        return None
    if text in TOKEN_RANGES:
        return text
    if not looks_numeric(text):
        raise PatchscopesError(f"unknown --token-range {text!r}",
                               hint="use all, subject_last or comma-separated positions such as 0,-1")
    return parse_indices(text, what="token-range")


def trace_cost(lm, prompt: str, subject: str, token_range, noise_samples: int) -> str:
    """What a trace runs, said before it starts: each noise sample is one corrupted run and one restoring patch
    per traced position and layer (besides one clean run)."""
    ids = lm.encode(prompt)
    traced = traced_positions(token_range, token_span(lm, prompt, ids, subject.strip(), "the subject"), len(ids))
    patches = noise_samples * (len(traced) * lm.num_layers + 1)
    cut = " (fewer: --noise-samples, --token-range subject_last)" if noise_samples > 1 or len(traced) > 1 else ""

    def count(n: int, what: str) -> str:
        return f"{n:,} {what}" if n == 1 else f"{n:,} {what}s"

    return (f"causal trace: {count(noise_samples, 'noise sample')} × ({count(len(traced), 'position')} × "
            f"{count(lm.num_layers, 'layer')} + 1 corrupted run) = {patches:,} patches, and 1 clean run{cut}")


def write_outputs(records: list[dict], figure: Callable[[], object], json_path: Path | None,
                  plot: Path | None) -> None:
    """Write the records to ``--json`` and the figure to ``--plot``, where asked for."""
    if json_path is not None:
        write_json(records, json_path)
        wrote("records", json_path)
    if plot is not None:
        wrote("figure", save_figure(figure(), plot))


@app.command("trace", short_help="Causal tracing (ROME) of one prompt.")
@opt.runtime_options()
def trace_command(
    prompt: Annotated[str, typer.Argument(help="The prompt, e.g. 'The Eiffel Tower is located in the city of'.")],
    subject: Annotated[
        str, typer.Option("--subject", metavar="TEXT", help="The subject (its tokens are corrupted).")
    ],
    answer: Annotated[
        str | None, typer.Option("--answer", metavar="TEXT", help="The answer traced (its first token); "
                                 "default: the model's top prediction on the clean prompt.")
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", metavar="KIND",
                          help="state (one block output), mlp or attn (that module over a window).")
    ] = "state",
    window: Annotated[
        int, typer.Option("--window", metavar="N", help="Layers restored together for mlp / attn.")
    ] = 10,
    noise_samples: Annotated[
        int, typer.Option("--noise-samples", metavar="N", callback=opt.at_least(1), help="Corrupted runs averaged.")
    ] = 10,
    noise_scale: Annotated[
        float | None, typer.Option("--noise-scale", metavar="S", show_default=False,
                                   callback=opt.at_least(0.0, strict=True),
                                   help="ν, the noise's standard deviation (default: 3 × the embeddings' std).")
    ] = None,
    seed: opt.seed_option("the noise") = 0,
    noise_kind: Annotated[
        str, typer.Option("--noise-kind", metavar="KIND",
                          help="gaussian (N(0, ν²)) or uniform (U(-ν, ν), ROME's uniform_noise).")
    ] = "gaussian",
    replace: Annotated[
        bool, typer.Option("--replace", help="Write the noise over the subject's embeddings instead of adding "
                           "it (ROME's replace).")
    ] = False,
    token_range: Annotated[
        str, typer.Option("--token-range", metavar="RANGE",
                          help="The positions traced: all, subject_last (ROME's) or comma-separated positions "
                               "such as 0,-1.")
    ] = "all",
    model: opt.ModelOption = DEFAULT_MODEL,
    json_path: opt.json_option("one record per (layer, traced position), with the trace's settings") = None,
    plot: opt.PlotOption = None,
    *,
    runtime: opt.Runtime,
) -> None:
    """Causal tracing: corrupt the subject's embeddings, restore clean states cell by cell, read p(answer).

    Examples:

    \b
      patchscopes trace "The Eiffel Tower is located in the city of" \\
          --subject "The Eiffel Tower" --plot trace.html
      patchscopes trace "The Eiffel Tower is located in the city of" \\
          --subject "Eiffel Tower" --kind mlp
      patchscopes trace "The Eiffel Tower is located in the city of" \\
          --subject "The Eiffel Tower" --noise-kind uniform --replace \\
          --token-range subject_last
    """
    check_subject(prompt, subject)
    if answer is not None and not answer.strip():
        raise PatchscopesError("the answer is empty", hint="give --answer ' Paris', or leave it out")
    if kind not in KINDS:
        raise PatchscopesError(f"unknown --kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if window < 1:
        raise PatchscopesError(f"--window must be at least 1, got {window}")
    opt.check_choice(noise_kind, NOISE_KINDS, "--noise-kind")
    positions = parse_token_range(token_range)
    opt.check_output_paths(json_path, plot)
    lm = runtime.load(model)
    err_console.print(Text(trace_cost(lm, prompt, subject, positions, noise_samples), style="dim"), soft_wrap=True)
    trace = causal_trace(lm, prompt, subject, answer=answer, kind=kind, window=window,  # type: ignore[arg-type]
                         noise_samples=noise_samples, noise_scale=noise_scale, seed=seed,
                         noise_kind=noise_kind, replace=replace, token_range=positions,  # type: ignore[arg-type]
                         options=runtime.options())
    console.print(Text.assemble(("causal trace", "bold"), f" · {lm.name} · {prompt!r} · answer {trace.answer!r}"),
                  soft_wrap=True)
    console.print(f"p clean {trace.p_clean:.4f} · p corrupted {trace.p_corrupted:.4f} · total effect "
                  f"{trace.total_effect:.4f} · ν {trace.noise_scale:.4g} ({trace.noise_kind}"
                  f"{', replacing the embeddings' if trace.replace else ''}) · {trace.noise_samples} noise samples")
    console.print(_top_cells(trace))
    write_outputs(trace.records(), trace.figure, json_path, plot)


def _top_cells(trace, n: int = 10) -> Table:
    table = Table(title=f"largest indirect effects ({trace.kind})", title_justify="left")
    for column in ("layer", "position", "token", "p restored", "indirect effect"):
        table.add_column(column, justify="right" if column != "token" else "left")
    records = sorted(trace.records(), key=lambda r: -r["indirect_effect"])[:n]
    for r in records:
        token = repr(r["token"]) + (" *" if r["is_subject"] else "")
        table.add_row(str(r["layer"]), str(r["position"]), token, f"{r['p_restored']:.4f}",
                      f"{r['indirect_effect']:+.4f}")
    return table
