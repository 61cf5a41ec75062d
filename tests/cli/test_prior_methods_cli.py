"""``patchscopes trace`` and ``patchscopes knockout``: records, figures and clean errors."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.runs import RunOptions

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
    assert {(r["noise_kind"], r["replace"], r["token_range"], r["seed"], r["noise_samples"]) for r in records} == {
        ("gaussian", False, None, 0, 2)}
    assert records[0]["noise_scale"] > 0 and isinstance(records[0]["answer_id"], int)
    assert plot.stat().st_size > 0


def test_trace_rome_options_reach_causal_trace(tiny_dir, tmp_path):
    out = tmp_path / "t.json"
    result = invoke("trace", PROMPT, "--subject", SUBJECT, "--model", tiny_dir, "--noise-samples", "2",
                    "--noise-scale", "0.5", "--seed", "3", "--noise-kind", "uniform", "--replace",
                    "--token-range", "subject_last", "--json", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert len(records) == 3 and {r["position"] for r in records} == {3}  # the subject's last byte, 3 layers
    first = records[0]
    assert (first["noise_kind"], first["replace"], first["token_range"], first["seed"], first["noise_scale"],
            first["noise_samples"]) == ("uniform", True, "subject_last", 3, 0.5, 2)
    expected = ps.causal_trace(ps.load_model(tiny_dir), PROMPT, SUBJECT, noise_samples=2, noise_scale=0.5, seed=3,
                               noise_kind="uniform", replace=True, token_range="subject_last",
                               options=RunOptions(engine="reference"))
    assert first["answer_id"] == expected.answer_id
    assert first["p_corrupted"] == pytest.approx(expected.p_corrupted, abs=1e-5)
    np.testing.assert_allclose([r["p_restored"] for r in records], expected.p_restored[0], atol=1e-5)
    added = ps.causal_trace(ps.load_model(tiny_dir), PROMPT, SUBJECT, noise_samples=2, noise_scale=0.5, seed=3,
                            noise_kind="uniform", token_range="subject_last")
    assert abs(added.p_corrupted - expected.p_corrupted) > 1e-3  # --replace makes a difference


def test_trace_positions_as_token_range(tiny_dir, tmp_path):
    out = tmp_path / "t.json"
    result = invoke("trace", PROMPT, "--subject", SUBJECT, "--model", tiny_dir, "--noise-samples", "1",
                    "--token-range", "-1,0", "--json", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert [r["position"] for r in records[::3]] == [14, 0] and records[0]["token_range"] == [14, 0]


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
    (("trace", PROMPT, "--subject", SUBJECT, "--noise-kind", "laplace"), "unknown --noise-kind"),
    (("trace", PROMPT, "--subject", SUBJECT, "--token-range", "subject"), "unknown --token-range"),
    (("trace", PROMPT, "--subject", SUBJECT, "--token-range", "0,99"), "not a position"),
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
