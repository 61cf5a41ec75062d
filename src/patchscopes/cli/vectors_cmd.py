"""``patchscopes describe-vectors``: SAE features, steering vectors or probe directions described in words.

The computation is :func:`patchscopes.experiments.vectors.describe_vectors`; this module checks the options
before the model loads, prints each vector's chosen text and writes ``--json`` / ``--csv`` / ``--html``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.vectors import describe_vectors, vectors_html
from patchscopes.models import DEFAULT_MODEL
from patchscopes.specs import check_spec
from patchscopes.storage import write_output, write_output_text
from patchscopes.vectors import SAE, load_vectors

PROMPTS = ("self-explanation", "selfie")


def parse_scales(value: str) -> str | list[float]:
    """``--scales``: ``auto`` or comma-separated positive numbers.

    Raises:
        PatchscopesError: Anything else.
    """
    if value.strip() == "auto":
        return "auto"
    try:
        scales = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise PatchscopesError(f"--scales {value!r} is neither 'auto' nor a list of numbers",
                               hint="e.g. --scales auto, or --scales 4,8,16,32") from None
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise PatchscopesError(f"--scales {value!r} must be positive finite numbers", hint="e.g. --scales 4,8,16")
    return scales


def parse_layer(value: str | None) -> int | str | None:
    """``--layer``: a block index or ``embeddings``."""
    if value is None or value == "embeddings":
        return value
    try:
        return int(value)
    except ValueError:
        raise PatchscopesError(f"--layer {value!r} is not a layer", hint="give a block index or 'embeddings'") from None


@app.command("describe-vectors", short_help="Describe SAE features or any vectors in words.")
@opt.runtime_options()
def describe_vectors_command(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="An SAELens SAE folder, or a .safetensors, .pt or "
                                         ".npy file of vectors (n, d).")],
    layer: Annotated[str | None, typer.Option("--layer", metavar="L", help="Where to write: a block index or "
                                              "'embeddings'. [default: the SAE's own layer]")] = None,
    features: Annotated[str | None, typer.Option("--features", metavar="SPEC", help="Which rows: 0:100, 3,7 or "
                                                 "all. [default: all]")] = None,
    scales: Annotated[str, typer.Option("--scales", metavar="auto|LIST", help="'auto' (8 multiples of the "
                                        "layer's typical norm) or norms, e.g. 4,8,16.")] = "auto",
    prompt: Annotated[str, typer.Option("--prompt", metavar="NAME", help="self-explanation or selfie.")]
    = "self-explanation",
    select: Annotated[str, typer.Option("--select", metavar="auto|X", help="'auto' (by the signals) or one "
                                        "scale for every vector.")] = "auto",
    key: Annotated[str | None, typer.Option("--key", metavar="NAME", help="The tensor to take from a file that "
                                            "holds several.")] = None,
    signal_layer: Annotated[int | None, typer.Option("--signal-layer", metavar="L", help="The layer of the "
                                                     "self-similarity signal. [default: the last]")] = None,
    signals: Annotated[bool, typer.Option("--signals/--no-signals", help="Measure the two signals (a second, "
                                          "prefill-only pass); without, give --select X.")] = True,
    max_new_tokens: opt.max_new_tokens_option() = 16,
    model: opt.ModelOption = DEFAULT_MODEL,
    json_path: opt.json_option("one record per (vector, scale)") = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", metavar="FILE", help="Write the records here (.csv).")]
    = None,
    html_path: Annotated[Path | None, typer.Option("--html", metavar="FILE", help="Write a page of each vector's "
                                                   "texts and signals here (.html).")] = None,
    *,
    runtime: opt.Runtime,
) -> None:
    """Write each vector, at several scales, into the self-explanation prompt ('What is the meaning of the word
    "X"?') and let the model explain it; self-similarity and entropy choose the scale.

    Examples:

    \b
      patchscopes describe-vectors my-sae/ --features 0:100 --html sae.html
      patchscopes describe-vectors steer.safetensors --layer 3 \\
          --scales 20,40,80 --json steer.json
    """
    opt.check_choice(prompt, PROMPTS, "--prompt")
    chosen_layer = parse_layer(layer)
    grid = parse_scales(scales)
    if features is not None and features != "all":
        check_spec(features, what="feature")
    pick: str | float = select
    if select != "auto":
        try:
            pick = float(select)
        except ValueError:
            raise PatchscopesError(f"--select {select!r} is neither 'auto' nor a number",
                                   hint="e.g. --select auto or --select 8") from None
    elif not signals:
        raise PatchscopesError("--no-signals needs a fixed scale", hint="add --select X (the scale nearest X)")
    for out, option, suffixes in ((json_path, "--json", (".json",)), (csv_path, "--csv", (".csv",)),
                                  (html_path, "--html", (".html", ".htm"))):
        if out is not None and out.suffix.lower() not in suffixes:
            raise PatchscopesError(f"{option} {out} must end in {' or '.join(suffixes)}",
                                   hint=f"e.g. {option} out{suffixes[0]}")
    opt.check_output_paths(None, None, files={"--json": json_path, "--csv": csv_path, "--html": html_path})
    vectors = load_vectors(path, key=key)  # a bad file is refused before the model loads
    if chosen_layer is None and not (isinstance(vectors, SAE) and vectors.layer is not None):
        raise PatchscopesError("no layer to write the vectors at",
                               hint="pass --layer L, or give an SAE whose cfg.json names its hook")
    lm = runtime.load(model)
    # describe_vectors checks the vectors' width, NaN/inf and the feature range before anything runs (exit 2)
    df = describe_vectors(lm, vectors, layer=chosen_layer, scales=grid, prompt=prompt,
                          features=None if features in (None, "all") else features, max_new_tokens=max_new_tokens,
                          select=pick, signal_layer=signal_layer, signals=signals,
                          options=runtime.options())
    console.print(table(df, lm.name))
    if json_path is not None:  # atomically, and none of them if one fails (storage.write_output)
        write_output_text(json_path, json.dumps(df.to_dict(orient="records"), indent=1, ensure_ascii=False),
                          "the JSON")
    if csv_path is not None:
        write_output(csv_path, lambda tmp: df.to_csv(tmp, index=False), "the CSV")
    if html_path is not None:
        write_output_text(html_path, vectors_html(df, f"{path.name} on {lm.name}"), "the page")
    for out in (json_path, csv_path, html_path):
        if out is not None:
            console.print(f"wrote {out}")


def table(df, model_name: str) -> Table:
    """The chosen row of each vector: its scale, signals, logit-lens reading and text."""
    out = Table(title=f"{df['feature'].nunique()} vectors on {model_name}, layer {df['layer'].iloc[0]}",
                title_justify="left")
    for name, justify in (("feature", "right"), ("scale", "right"), ("self-sim", "right"), ("entropy", "right"),
                          ("logit lens", "left"), ("text", "left")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in df[df["chosen"]].itertuples():
        out.add_row(str(row.feature), f"{row.scale:.4g}", f"{row.self_similarity:.3f}", f"{row.entropy:.2f}",
                    row.logit_lens, row.text)
    return out
