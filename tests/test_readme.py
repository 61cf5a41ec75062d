"""The README's Python examples run as written, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_has_python_examples():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "the README lost its Python examples"
    assert any("ps.load_model" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, smollm2):
    """Each block runs top to bottom in a fresh namespace, in a scratch folder (files it writes land there).

    ``ps.load_model("smollm2-135m")`` returns the session's already-loaded model, so the test costs the
    examples' own work, not a reload.
    """
    import patchscopes as ps

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ps, "load_model", lambda name, **kw: smollm2 if name == "smollm2-135m" else pytest.fail(name))
    code = python_blocks(README.read_text(encoding="utf-8"))[index]
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    # Whatever the block made must be real: a DataFrame it builds has rows, a file it saves exists.
    for value in namespace.values():
        if hasattr(value, "shape") and hasattr(value, "columns"):
            assert len(value) > 0
    for saved in re.findall(r"save_results\([^,]+,\s*\"([^\"]+)\"\)", code):
        assert (tmp_path / saved).exists(), saved
