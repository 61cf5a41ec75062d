"""The coverage matrix: every causal-LM family of the installed transformers, tiny, through both engines.

Each family either runs with the batched engine equal to the reference engine (fast path), runs on the
hooked path because the fast path is not exact on its blocks, or is refused at load with a message, or
cannot be built tiny from its default config. Never an engine error or a disagreement. Each family's live
outcome must be the one stored in ``coverage_matrix.json``: a family that changes status (leaves the fast
path, say) fails until the matrix is regenerated on purpose (``python scripts/coverage_matrix.py``). Every
family runs by default (about a minute in all) but the few whose tiny build alone takes over ten seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchscopes.testing.coverage import COVERAGE_FILE, STATUSES, check_family, coverage_markdown, load_coverage
from patchscopes.testing.families import causal_lm_families

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"

# Known engine failures, each with its cause (a bug to fix, listed so that it cannot go unnoticed).
KNOWN_FAILURES: dict[str, str] = {}
# Families whose tiny build takes over ten seconds.
SLOW_BUILD = {"kimi_linear", "nemotron_h", "bailing_hybrid"}

FAMILIES = causal_lm_families()
STORED_VERSION, STORED_ROWS = load_coverage()
STORED = {r.model_type: r for r in STORED_ROWS}
REGENERATE = "if the change is meant, regenerate the matrix: python scripts/coverage_matrix.py"


def _param(model_type: str, model_class: str):
    marks = [pytest.mark.slow] if model_type in SLOW_BUILD else []
    if model_type in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[model_type], strict=True))
    return pytest.param(model_type, model_class, marks=marks, id=model_type)


@pytest.mark.parametrize("model_type, model_class", [_param(*f) for f in FAMILIES])
def test_family(model_type, model_class):
    """The live outcome of a family is the stored matrix's: a family cannot leave the fast path unnoticed.

    With the transformers version the matrix was made with, every family must be in it. With another
    version, the families both know are compared (a new family is only held to "never fails").
    """
    import transformers

    row = check_family(model_type, model_class)
    assert row.status != "fails", f"{model_type}: {row.detail}"
    if row.status in ("refused", "hooked"):
        assert row.detail, f"{model_type}: {row.status} without a message saying why"
    stored = STORED.get(model_type)
    if stored is None:
        assert transformers.__version__ != STORED_VERSION, (
            f"{model_type} is not in the stored matrix of transformers {STORED_VERSION}; {REGENERATE}")
        return
    assert row.status == stored.status, (
        f"{model_type}: {row.status!r} now, {stored.status!r} in the stored matrix "
        f"(transformers {STORED_VERSION}, installed {transformers.__version__}): {row.detail}; {REGENERATE}")


def test_stored_matrix_covers_every_family_and_docs_match_it():
    version, rows = load_coverage()
    import transformers

    if version == transformers.__version__:
        assert [(r.model_type, r.model_class) for r in rows] == FAMILIES
    assert {r.status for r in rows} <= set(STATUSES)
    assert all(r.detail for r in rows if r.status in ("refused", "hooked"))  # each says why
    assert DOC.read_text(encoding="utf-8") == coverage_markdown(version, rows)
    fast = [r for r in rows if r.status == "fast path"]
    assert len(fast) + sum(r.status == "hooked" for r in rows) >= 100  # nnterp documents about a hundred
    assert json.loads(COVERAGE_FILE.read_text())["families"][0]["model_type"] == rows[0].model_type
