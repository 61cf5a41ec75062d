"""What a new user meets first: missing data sets point to docs/data.md, full texts in tables, byte tokens shown
readably, listings that fit 80 columns, the cost of a long command said before it starts."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from patchscopes.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def invoke(*args: str, columns: int = 200, env: dict | None = None):
    return runner.invoke(app, list(args), env={**ENV, "COLUMNS": str(columns), **(env or {})})


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


# -- data sets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("eval", "next-token"),
    ("eval", "next-token", "--text", "no-such-wikitext.txt"),
    ("fit-lens", "--text", "no-such-wikitext.txt"),
    ("eval", "attributes", "--relations", "no-such-relations"),
    ("eval", "entities", "--entities", "no-such-popqa.tsv"),
], ids=["no-text", "missing-text", "fit-lens", "missing-relations", "missing-entities"])
def test_a_missing_data_set_points_to_the_data_page(args, tmp_path):
    result = invoke(*args, env={"PATCHSCOPES_DATA_DIR": str(tmp_path)})
    assert_clean_error(result, "docs/data.md", "hint:")


def test_the_data_page_covers_every_data_set_and_is_linked_from_the_readme():
    page = (ROOT / "docs" / "data.md").read_text()
    assert "docs/data.md" in (ROOT / "README.md").read_text()
    for needed in ('load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1"', "evandez/relations",
                   "PAIR-code/interpretability", 'load_dataset("akariasai/PopQA"', "declare-lab/WikiDes",
                   "PATCHSCOPES_DATA_DIR", "CC BY-SA 3.0", "Apache-2.0", "MIT"):
        assert needed in page, needed
    # Every data path the README's experiment commands read is one the page puts in place.
    readme_paths = re.findall(r"\$PATCHSCOPES_DATA_DIR/([\w/.-]+)", (ROOT / "README.md").read_text())
    assert readme_paths
    for path in readme_paths:
        assert path.split("/")[0] + "/" in page, path
