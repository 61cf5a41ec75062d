"""The coverage matrix: every causal-LM family of the installed transformers, tiny and random, through both engines.

For each family (:func:`patchscopes.testing.families.causal_lm_families`) :func:`check_family` builds the model
tiny from its default config, loads it (layout registered or discovered, then proved), runs a token-identity
sweep over every layer and a short patched generation with the reference engine and, where the fast path
applies, with the batched engine, and compares them. The outcome is one :class:`FamilyCoverage`:

- ``fast path``: the batched engine runs and equals the reference engine;
- ``hooked``: the layout is proved but the fast path is not exact (recurrent or state-space blocks, padding
  the model does not mask); :func:`patchscopes.run` uses the reference engine;
- ``refused``: loading stops with a message (a layout that cannot be found or fails the proof);
- ``not built``: the family cannot be built tiny from its default config, or the built model's own forward
  fails on token ids (it needs inputs or settings this generic shrinking does not give);
- ``fails``: an engine raised or the engines disagree. This is a bug; the tests allow none.

``scripts/coverage_matrix.py`` writes the table to ``docs/models.md`` and to the JSON file that
``patchscopes models --families`` prints (:func:`load_coverage`).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.results import PatchResult
from patchscopes.runner import run
from patchscopes.sweep import plan_sweep
from patchscopes.testing.families import tiny_family_model

PROMPTS = ("The Eiffel Tower is in Paris", "Hi")
STATUSES = ("fast path", "hooked", "refused", "not built", "fails")
COVERAGE_FILE = Path(__file__).with_name("coverage_matrix.json")


@dataclass(frozen=True)
class FamilyCoverage:
    """How one family fares.

    Attributes:
        model_type: The ``config.model_type``.
        model_class: The ``AutoModelForCausalLM`` class.
        status: One of :data:`STATUSES`.
        layout: ``declared NAME`` or ``discovered`` with the paths found; empty where the model did not load.
        detail: Why the fast path does not apply, why loading was refused, or what failed.
        seconds: Time taken by the check.
    """

    model_type: str
    model_class: str
    status: str
    layout: str = ""
    detail: str = ""
    seconds: float = 0.0


def first_difference(got: list[PatchResult], expected: list[PatchResult], atol: float = 1e-4) -> str | None:
    """Where two result lists disagree (top-1 token, top-k probabilities, generated text), or ``None``."""
    for k, (a, b) in enumerate(zip(got, expected)):
        ra, rb = a.readings, b.readings
        where = f"result {k} (l={a.source_layer}, i={a.source_position})"
        if ra.top_token_ids[:1] != rb.top_token_ids[:1]:
            return f"{where}: top-1 token {ra.top_token_ids[:1]} != {rb.top_token_ids[:1]}"
        gap = max((abs(p - q) for p, q in zip(ra.top_probs, rb.top_probs)), default=0.0)
        if gap > atol:
            return f"{where}: top-k probabilities differ by {gap:.3g}"
        if (ra.generated_token_ids, ra.generated_text) != (rb.generated_token_ids, rb.generated_text):
            return f"{where}: generated {ra.generated_text!r} != {rb.generated_text!r}"
    return None if len(got) == len(expected) else f"{len(got)} results != {len(expected)}"


def _layout(model: LanguageModel) -> str:
    spec = model.arch.spec
    if spec.name.endswith("(discovered)"):
        return f"discovered: blocks={spec.blocks}, final_norm={spec.final_norm or 'none'}"
    return f"declared {spec.name}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def check_family(model_type: str, model_class: str) -> FamilyCoverage:
    """Build, load and run one family tiny; see the module docstring for the outcomes."""
    start = time.perf_counter()

    def done(status: str, layout: str = "", detail: str = "") -> FamilyCoverage:
        return FamilyCoverage(model_type, model_class, status, layout, detail, round(time.perf_counter() - start, 2))

    try:
        hf_model, tokenizer = tiny_family_model(model_type)
        with torch.no_grad():  # the model's own forward must run before patchscopes can be asked to
            hf_model(input_ids=torch.tensor([tokenizer(PROMPTS[0])["input_ids"]]))
    except Exception as err:  # transformers raises anything on a config it cannot build or run
        return done("not built", detail=_first_line(err))
    try:
        model = LanguageModel(hf_model, tokenizer, name=f"tiny-{model_type}")
    except PatchscopesError as err:
        return done("refused", detail=err.message[:300])
    layout = _layout(model)
    mid = str(model.num_layers // 2)
    scopes = plan_sweep(model, list(PROMPTS), "token-identity", layers="all", positions="0,-1", top_k=5)
    # two generations on one target prompt: rows that share its prefix cache
    scopes += plan_sweep(model, list(PROMPTS), "token-identity", layers=mid, positions="-1", max_new_tokens=4)
    try:
        expected = run(scopes, model, engine="reference")
        if not model.fast_path.batched:
            return done("hooked", layout, model.fast_path.reason or "")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the batched engine must not fall back here
            got = run(scopes, model, engine="batched")
    except Exception as err:  # an engine failing on a model it accepted is the bug this matrix looks for
        return done("fails", layout, _first_line(err))
    difference = first_difference(got, expected)
    return done("fails", layout, f"the engines disagree: {difference}") if difference else done("fast path", layout)


def save_coverage(rows: list[FamilyCoverage], path: Path = COVERAGE_FILE) -> None:
    """Write the matrix as JSON (the file ``patchscopes models --families`` reads)."""
    import transformers

    data = {"transformers": transformers.__version__, "families": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load_coverage(path: Path = COVERAGE_FILE) -> tuple[str, list[FamilyCoverage]]:
    """The stored matrix: the transformers version it was made with, and one row per family.

    Raises:
        PatchscopesError: The file is missing (run ``scripts/coverage_matrix.py``).
    """
    if not path.is_file():
        raise PatchscopesError(f"no coverage matrix at {path}", hint="write it with python scripts/coverage_matrix.py")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["transformers"], [FamilyCoverage(**row) for row in data["families"]]


def coverage_markdown(version: str, rows: list[FamilyCoverage]) -> str:
    """``docs/models.md``: the summary counts and one table row per family."""
    counts = {status: sum(r.status == status for r in rows) for status in STATUSES}
    lines = [
        "# Model families",
        "",
        f"Every causal-LM class of transformers {version} (`AutoModelForCausalLM`), built tiny and random from its "
        "default config, loaded, and run through a token-identity sweep over every layer and a short patched "
        "generation with both engines (`patchscopes.testing.coverage`, `python scripts/coverage_matrix.py`, "
        "`patchscopes models --families`).",
        "",
        "- **fast path**: the batched engine runs and its results equal the reference engine's.",
        "- **hooked**: the layout is proved, but the batched engine's fast path is not exact on these blocks "
        "(recurrent or state-space state instead of a key/value cache, or padding the model does not mask); "
        "`patchscopes.run` uses the plain hooked engine for them, with a warning.",
        "- **refused**: loading stops with a message saying what did not match and how to give an "
        "`ArchitectureSpec` by hand.",
        "- **not built**: the family cannot be built tiny from its default config (it needs other inputs or "
        "settings); this says nothing of the real checkpoints.",
        "",
        "| status | families |",
        "|---|---|",
        *[f"| {status} | {counts[status]} |" for status in STATUSES],
        "",
        "Layouts are *declared* (a registered `ArchitectureSpec`, matched by `model_type` or class) or "
        "*discovered*: the embeddings from `get_input_embeddings()` / `get_output_embeddings()`, the blocks as "
        "the `ModuleList` of the config's number of layers, the final norm as what runs between the last block "
        "and the unembedding in a traced forward. Every layout is proved at load: the logit lens at the last "
        "layer must give the model's logits, the identity patch must reproduce the run, and a patch must reach "
        "later positions only.",
        "",
        "Multimodal models: a `*ForConditionalGeneration` in this list (Gemma 3 from 4B up) is patched and read "
        "through its language model, with text prompts; one with no causal-LM class (LLaVA-style) loads through "
        "`AutoModelForImageTextToText` (`load_model` falls back to it; a tiny LLaVA is in the tests).",
        "",
        "Where discovery fails or the proof refuses a layout, give it by hand:",
        "",
        "```python",
        "import patchscopes as ps",
        "spec = ps.ArchitectureSpec(name='my-family', model_types=('my_model',), blocks='model.layers',",
        "                           final_norm='model.norm', unembed='lm_head', embed='model.embed_tokens')",
        "model = ps.load_model('path/to/checkpoint', spec=spec)  # or ps.register_architecture(spec) once",
        "```",
        "",
        "`final_norm` may join several modules with `+` (a norm, then a projection) or be `''` for none; "
        "`logit_softcap` and `logit_scale` name the config attributes of output transforms. The proof still "
        "runs on a layout given by hand.",
        "",
        "| model_type | class | status | layout | detail |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{r.model_type}` | {r.model_class} | {r.status} | {r.layout} | {detail} |")
    return "\n".join(lines) + "\n"
