"""``patchscopes fit-lre``: estimate the linear relational embedding (LRE) of one relation and save it.

The LRE of Hernandez et al. (2024): W is the mean Jacobian of the last layer's state at the prompt's last
token with respect to the subject's state at layer l, over in-context examples; b the mean residual; f(s) =
β W s + b read through the final norm and unembedding (:mod:`patchscopes.lenses.lre`). After fitting, the
command reports the paper's faithfulness on the relation's other subjects.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, write_json, wrote
from patchscopes.data.relations import load_relation
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.lre import DEFAULT_EXAMPLES, choose_examples, faithfulness, fit_lre
from patchscopes.models import DEFAULT_MODEL


@app.command("fit-lre", short_help="Fit the LRE of a relation (Hernandez et al.) and report faithfulness.")
@opt.runtime_options()
@opt.run_options()
def fit_lre_command(
    relation: Annotated[
        Path, typer.Option("--relation", "-r", metavar="FILE", help="A relation file (.json in the relations "
                           "schema, or the paper's .tsv).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The LRE file to write (.safetensors).")],
    model: opt.ModelOption = DEFAULT_MODEL,
    layer: Annotated[
        int | None, typer.Option("--layer", "-l", metavar="L", show_default=False,
                                 help="Layer l of the subject state (negative: from the end).  [default: L // 3]")
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", "-n", metavar="N", callback=opt.at_least(2),
                          help="In-context examples to fit on (the paper: 8).")
    ] = DEFAULT_EXAMPLES,
    beta: Annotated[
        float | None, typer.Option("--beta", metavar="B", show_default=False, callback=opt.at_least(0.0, strict=True),
                                   help="β, the scale of W.  [default: chosen on the examples]")
    ] = None,
    test_samples: Annotated[
        int, typer.Option("--test-samples", metavar="N", callback=opt.at_least(0),
                          help="Other subjects to measure faithfulness on (0: none).")
    ] = 50,
    seed: opt.seed_option("the example draw") = 0,
    json_path: opt.json_option("the faithfulness records") = None,
    *,
    runtime: opt.Runtime,
    runs: opt.Runs,
) -> None:
    """Fit the LRE of a relation (Hernandez et al. 2024) at one layer, save it, and report its faithfulness.

    Examples:

    \b
      patchscopes fit-lre \\
          --relation data/relations/factual/country_capital_city.json \\
          --layer 10 --out lres/capital.safetensors
    """
    arguments = {**locals(), "lre_examples": examples}  # (--examples is a setting here, not an output)
    if out.suffix.lower() != ".safetensors":
        raise PatchscopesError(f"--out {out}: the file name must end in .safetensors")
    opt.check_output_paths(json_path, None, files={"--out": out})
    if beta is not None and not beta > 0:
        raise PatchscopesError(f"--beta must be positive, got {beta}")
    rel = load_relation(relation)
    choose_examples(rel, examples, seed=seed)  # too few subjects: refuse before loading the model
    lm = runtime.load(model)
    chosen_layer = lm.num_layers // 3 if layer is None else lm.check_layer(layer)
    store = runs.open("fit-lre", arguments, runtime, [lm], data=rel)
    start = time.perf_counter()
    lre = fit_lre(lm, rel, chosen_layer, examples=examples, beta=beta, seed=seed,
                  options=runtime.options(store=store))[chosen_layer]
    lre.save(out)
    console.print(Text(f"LRE of {rel.name!r} on {lm.name}: layer {lre.layer}, β = {lre.beta:g} "
                       f"({lre.config['beta_chosen']}), {len(lre.examples)} examples, faithfulness on them "
                       f"{100 * lre.config['fit_faithfulness']:.0f}%; {time.perf_counter() - start:.0f} s"),
                  soft_wrap=True)
    wrote("LRE", out)
    fitted = {x.subject for x in lre.examples}
    others = [s for s in rel.samples if s.subject not in fitted][:test_samples]
    if not others:
        return
    frame = faithfulness(lm, lre, others, options=runtime.options(runs, store))
    table = Table(title=Text(f"faithfulness on {len(frame)} other subjects"), title_justify="left")
    for name in ("faithful %", "model correct %", "LRE correct %", "faithful where the model is correct %"):
        table.add_column(name, justify="right")
    known = frame[frame["lm_correct"]]
    table.add_row(f"{100 * frame['faithful'].mean():.1f}", f"{100 * frame['lm_correct'].mean():.1f}",
                  f"{100 * frame['lre_correct'].mean():.1f}",
                  f"{100 * known['faithful'].mean():.1f} (n={len(known)})" if len(known) else "–")
    console.print(table)
    if json_path is not None:
        write_json(frame.to_dict(orient="records"), json_path)
        wrote("JSON", json_path)
