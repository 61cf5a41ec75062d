"""The coverage matrix: every causal-LM family of the installed transformers, tiny, through both engines.

Each family either runs with the batched engine equal to the reference engine (fast path), runs on the
hooked path because the fast path is not exact on its blocks, or is refused at load with a message, or
cannot be built tiny from its default config. Never an engine error or a disagreement. Every family runs
by default (about a minute in all) but the few whose tiny build alone takes over ten seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchscopes.coverage import COVERAGE_FILE, STATUSES, check_family, coverage_markdown, load_coverage
from patchscopes.tiny_families import causal_lm_families

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"

# Families researchers use most, and those the issue names: they must take the fast path.
FAST = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2", "gptj", "gpt_neox",
    "phi", "phi3", "olmo", "olmo2", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "falcon", "opt", "bloom",
    "stablelm", "starcoder2", "cohere", "granite", "gpt_neo", "gpt_bigcode", "llama4_text", "gemma3",
    "smollm3", "olmoe", "granitemoe", "codegen", "gemma4_text", "deepseek_v3", "persimmon", "mpt", "xglm", "biogpt",
}
# Recurrent and state-space families that must run on the hooked path, never the fast one.
HOOKED = {"mamba", "falcon_mamba", "qwen3_next"}
# Known engine failures, each with its cause (a bug to fix, listed so that it cannot go unnoticed).
KNOWN_FAILURES: dict[str, str] = {}
# Families whose tiny build takes over ten seconds.
SLOW_BUILD = {"kimi_linear", "nemotron_h", "bailing_hybrid"}

FAMILIES = causal_lm_families()


def _param(model_type: str, model_class: str):
    marks = [pytest.mark.slow] if model_type in SLOW_BUILD else []
    if model_type in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[model_type], strict=True))
    return pytest.param(model_type, model_class, marks=marks, id=model_type)


@pytest.mark.parametrize("model_type, model_class", [_param(*f) for f in FAMILIES])
def test_family(model_type, model_class):
    row = check_family(model_type, model_class)
    assert row.status != "fails", f"{model_type}: {row.detail}"
    if model_type in FAST:
        assert row.status == "fast path", f"{model_type}: {row.status}: {row.detail}"
    if model_type in HOOKED:
        assert row.status == "hooked" and row.detail, f"{model_type}: {row.status}: {row.detail}"
    if row.status == "refused":
        assert row.detail  # a message saying what did not match


def test_stored_matrix_covers_every_family_and_docs_match_it():
    version, rows = load_coverage()
    import transformers

    if version == transformers.__version__:
        assert [(r.model_type, r.model_class) for r in rows] == FAMILIES
    assert {r.status for r in rows} <= set(STATUSES)
    assert DOC.read_text(encoding="utf-8") == coverage_markdown(version, rows)
    fast = [r for r in rows if r.status == "fast path"]
    assert len(fast) + sum(r.status == "hooked" for r in rows) >= 100  # nnterp documents about a hundred
    assert json.loads(COVERAGE_FILE.read_text())["families"][0]["model_type"] == rows[0].model_type
