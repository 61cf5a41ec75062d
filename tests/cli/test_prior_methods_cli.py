"""``patchscopes trace`` and ``patchscopes knockout``: records, figures and clean errors."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from patchscopes.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROMPT, SUBJECT = "Ann is in Rome", "Ann"


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def test_trace_writes_records_and_heatmap(tiny_dir, tmp_path):
    out, plot = tmp_path / "t.json", tmp_path / "t.html"
    result = invoke("trace", PROMPT, "--subject", SUBJECT, "--model", tiny_dir, "--noise-samples", "2",
                    "--json", str(out), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 15 * 3  # <bos> + 14 bytes, 3 layers
    for key in ("layer", "position", "token", "is_subject", "kind", "p_clean", "p_corrupted", "p_restored",
                "indirect_effect"):
        assert key in records[0]
    assert {r["position"] for r in records if r["is_subject"]} == {1, 2, 3}
    assert plot.stat().st_size > 0


def test_trace_window_kind_and_given_answer(tiny_dir, tmp_path):
    out = tmp_path / "t.json"
    result = invoke("trace", PROMPT, "--subject", SUBJECT, "--model", tiny_dir, "--noise-samples", "1",
                    "--kind", "mlp", "--window", "2", "--answer", "x", "--json", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert {r["kind"] for r in records} == {"mlp"} and records[0]["answer"] == "x"


def test_knockout_writes_records(tiny_dir, tmp_path):
    out = tmp_path / "k.json"
    result = invoke("knockout", PROMPT, "--subject", SUBJECT, "--model", tiny_dir, "--window", "2",
                    "--json", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 3 * 3
    assert {r["blocked"] for r in records} == {"subject", "non-subject", "last"}
    for key in ("layer", "blocked", "p_original", "p_knocked", "relative_change"):
        assert key in records[0]


@pytest.mark.parametrize("args, fragment", [
    (("trace", PROMPT, "--subject", "Bob"), "does not occur"),
    (("trace", PROMPT, "--subject", SUBJECT, "--answer", " "), "answer is empty"),
    (("trace", PROMPT, "--subject", SUBJECT, "--kind", "mlp", "--window", "5"), "window"),
    (("trace", PROMPT, "--subject", SUBJECT, "--kind", "nope"), "unknown --kind"),
    (("knockout", PROMPT, "--subject", "Bob"), "does not occur"),
    (("knockout", PROMPT, "--subject", SUBJECT, "--window", "7"), "window"),
])
def test_bad_input_exits_2(tiny_dir, args, fragment):
    result = invoke(*args, "--model", tiny_dir)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_inspect_selfie_records_relevancy(tiny_dir, tmp_path):
    out = tmp_path / "s.json"
    result = invoke("inspect", PROMPT, "--scope", "selfie", "--model", tiny_dir, "--layers", "1",
                    "--positions", "-1", "--max-new-tokens", "3", "--json", str(out))
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())
    assert len(record["relevancy"]) == len(record["generated_token_ids"]) > 0
