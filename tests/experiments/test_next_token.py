"""Experiment 1 (next-token prediction across layers): metrics, methods, data handling and the commands."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.data.text import Document, token_windows
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.next_token import (
    demo_prompt,
    evaluate_next_token,
    next_token_figure,
    next_token_samples,
    random_demo_words,
    sample_positions,
    summarize_next_token,
)
from patchscopes.lenses import fit_affine_lens
from patchscopes.runs import RunOptions
from patchscopes.testing import tiny_model

TEXTS = [f"Paragraph {i}: a cat sat on the mat and looked at {i * 3} birds in the tree." for i in range(30)]
runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# -- prompts given as token ids (the engine extension this experiment uses) ------------------------------------
def test_token_id_prompts_equal_text_prompts(tiny_llama, assert_same):
    lm = tiny_llama
    text = "a cat sat"
    ids = tuple(lm.encode(text))
    by_text = [ps.Patchscope(ps.Source(text, 1, 3), ps.Target(ps.TOKEN_IDENTITY_PROMPT, 1, -1))]
    by_ids = [ps.Patchscope(ps.Source(ids, 1, 3), ps.Target(ps.TOKEN_IDENTITY_PROMPT, 1, -1))]
    for engine in ("batched", "reference"):
        assert_same(ps.run(by_ids, lm, engine=engine), ps.run(by_text, lm, engine=engine))
    # Token ids are used as given: no second <bos>.
    result = ps.run(ps.Patchscope(ps.Source(ids[:3], 1, -1), ps.Target(ids[:3], 2, -1)), lm)[0]
    assert result.source_position == 2 and result.source_prompt == lm.decode(ids[:3])


def test_token_id_prompt_errors(tiny_llama):
    with pytest.raises(PatchscopesError, match="token ids"):
        ps.run(ps.Patchscope(ps.Source((1, 5, 6), 0, "cat"), ps.Target("x", 0)), tiny_llama)
    with pytest.raises(PatchscopesError, match="not all are integers"):
        ps.run(ps.Patchscope(ps.Source((1, 10_000), 0), ps.Target("x", 0)), tiny_llama)
    with pytest.raises(PatchscopesError, match="empty"):
        ps.run(ps.Patchscope(ps.Source((), 0), ps.Target("x", 0)), tiny_llama)


# -- sampling and demonstrations ----------------------------------------------------------------------------
def test_sample_positions_are_seeded_and_one_per_window(tiny_llama):
    windows, _ = token_windows(tiny_llama, [Document(t) for t in TEXTS], max_tokens=32)
    a = sample_positions(windows, 20, seed=3)
    assert a == sample_positions(windows, 20, seed=3)
    assert a != sample_positions(windows, 20, seed=4)
    assert len({id(s.window) for s in a}) == 20
    assert all(s.window.start + 1 <= s.position < len(s.window.ids) for s in a)
    assert all(len(s.source_ids) == s.position + 1 for s in a)
    assert len(sample_positions(windows, 10_000)) == len(windows)


def test_random_demo_words_are_single_tokens(smollm2):
    sets = random_demo_words(smollm2, k=3, sets=3, seed=0)
    assert sets == random_demo_words(smollm2, k=3, sets=3, seed=0)
    assert len(sets) == 3 and all(len(s) == 3 for s in sets)
    words = [w for s in sets for w in s]
    assert len(set(words)) == 9
    for w in words:
        assert w.isalpha() and len(smollm2.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1
    assert demo_prompt(["dog", "tree"]) == "dog -> dog\ntree -> tree\n?"


# -- the metrics equal a plain per-sample computation --------------------------------------------------------
@pytest.fixture(scope="module")
def samples_frame(tiny_llama):
    return next_token_samples(tiny_llama, TEXTS, samples=12, max_tokens=32, seed=1)


def _plain_hidden(lm, ids):
    out = lm.hf(torch.tensor([list(ids)]), output_hidden_states=True)
    return out.hidden_states, torch.log_softmax(out.logits[0, -1].float(), -1)


def test_metrics_match_a_plain_computation(tiny_llama, samples_frame):
    lm = tiny_llama
    last = lm.num_layers - 1
    windows, _ = token_windows(lm, [Document(t) for t in TEXTS], max_tokens=32)
    chosen = sample_positions(windows, 12, seed=1)
    logit = samples_frame[samples_frame.method == "logit-lens"]
    assert len(logit) == 12 * lm.num_layers
    with torch.no_grad():
        for row in logit.itertuples():
            hidden_states, final = _plain_hidden(lm, chosen[row.sample].source_ids)
            # Layer l is the output of block l: hidden_states[l + 1] before the final norm (the last one has it).
            h = hidden_states[row.layer + 1][0, -1]
            predicted = int(lm.head(h[None])[0].argmax()) if row.layer < last else int(final.argmax())
            assert row.predicted_token_id == predicted
            assert row.final_token_id == int(final.argmax())
            assert row.correct == (predicted == int(final.argmax()))
            assert row.surprisal == pytest.approx(float(-final[predicted]), abs=1e-4)


def test_last_layer_logit_lens_is_exact(samples_frame):
    summary = summarize_next_token(samples_frame)
    top = summary[(summary.method == "logit-lens") & (summary.layer == summary.layer.max())].iloc[0]
    assert top.precision_at_1 == 1.0
    rows = samples_frame[(samples_frame.method == "logit-lens") & (samples_frame.layer == top.layer)]
    # Surprisal of the model's own argmax: −log max p.
    assert top.surprisal == pytest.approx(rows.surprisal.mean())
    assert (rows.predicted_token_id == rows.final_token_id).all()


def test_token_identity_matches_the_reference_engine(tiny_llama, samples_frame):
    reference = next_token_samples(tiny_llama, TEXTS, samples=4, max_tokens=32, seed=1,
                                   options=RunOptions(engine="reference"), methods=["token-identity", "random-demos"],
                                   demo_sets=2)
    batched = next_token_samples(tiny_llama, TEXTS, samples=4, max_tokens=32, seed=1,
                                 methods=["token-identity", "random-demos"], demo_sets=2)
    assert (reference.predicted_token_id.values == batched.predicted_token_id.values).all()
    assert reference.surprisal.values == pytest.approx(batched.surprisal.values, abs=1e-4)


def test_summary_columns_and_spread(samples_frame):
    summary = summarize_next_token(samples_frame)
    assert list(summary.columns[:5]) == ["method", "layer", "precision_at_1", "surprisal", "n"]
    assert list(dict.fromkeys(summary.method)) == ["logit-lens", "token-identity", "random-demos"]
    assert (summary.n == 12).all()
    demos = summary[summary.method == "random-demos"]
    assert (demos.sets == 3).all() and demos.precision_at_1_std.notna().all()
    assert summary[summary.method == "token-identity"].precision_at_1_std.isna().all()
    raw = samples_frame[(samples_frame.method == "random-demos") & (samples_frame.layer == 0)]
    per_set = raw.groupby("set").correct.mean()
    row = demos[demos.layer == 0].iloc[0]
    assert row.precision_at_1 == pytest.approx(per_set.mean())
    assert row.precision_at_1_std == pytest.approx(per_set.std(ddof=0))
    assert samples_frame.attrs["samples"] == 12 and len(samples_frame.attrs["demo_prompts"]) == 3
    fig = next_token_figure(summary)
    assert len(fig.data) == 3 * 2 + 2  # a line per method and metric, plus the two spread bands


def test_lens_methods_exclude_fit_documents_and_refuse_other_models(tiny_llama, wide_llama):
    lens = fit_affine_lens(tiny_llama, TEXTS[:10], samples=5000, max_tokens=32)  # every position
    table = evaluate_next_token(tiny_llama, TEXTS, samples=5, max_tokens=32, lenses=[lens],
                                methods=["logit-lens", "affine-lens"])
    assert table.attrs["excluded_fit_documents"] == 10 and table.attrs["documents"] == 20
    assert set(table.method) == {"logit-lens", "affine-lens"}
    last = table[table.layer == tiny_llama.num_layers - 1]
    assert (last.precision_at_1 == 1.0).all()  # the last layer's map is the identity
    with pytest.raises(PatchscopesError, match="another model"):
        evaluate_next_token(wide_llama, TEXTS, samples=2, lenses=[lens])
    with pytest.raises(PatchscopesError, match="unknown method 'tuned-lens'"):
        evaluate_next_token(tiny_llama, TEXTS, samples=2, methods=["tuned-lens"])


# -- the commands -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text(" = Heading =\n\n" + "\n\n".join(TEXTS) + "\n\nx\n")
    return str(path)


def _invoke(*args):
    return runner.invoke(app, list(args), env=ENV)


def test_fit_lens_and_eval_commands(tiny_dir, text_file, tmp_path):
    lens_dir = tmp_path / "lens"
    result = _invoke("fit-lens", "--model", tiny_dir, "--text", text_file, "--out", str(lens_dir),
                     "--samples", "300", "--max-tokens", "32")
    assert result.exit_code == 0, result.output
    config = json.loads((lens_dir / "lens.json").read_text())
    assert config["kind"] == "affine" and config["split"]["part"] == "fit"
    assert config["model"]["num_layers"] == 3 and config["data"]["samples"] == 300

    out_json, plot = tmp_path / "nt.json", tmp_path / "nt.html"
    result = _invoke("eval", "next-token", "--model", tiny_dir, "--text", text_file, "--lens", str(lens_dir),
                     "--samples", "6", "--max-tokens", "32", "--demo-sets", "2", "--json", str(out_json),
                     "--plot", str(plot))
    assert result.exit_code == 0, result.output
    records = json.loads(out_json.read_text())
    assert {"method", "layer", "precision_at_1", "surprisal", "n"} <= set(records[0])
    assert {r["method"] for r in records} == {"logit-lens", "affine-lens", "token-identity", "random-demos"}
    assert len(records) == 4 * 3
    assert all(0.0 <= r["precision_at_1"] <= 1.0 and r["surprisal"] >= 0 and r["n"] >= 1 for r in records)
    assert all(r["precision_at_1_std"] is not None for r in records if r["method"] == "random-demos")
    assert all(r["precision_at_1_std"] is None for r in records if r["method"] != "random-demos")
    html = plot.read_text()
    assert "plotly" in html.lower() and "Precision@1" in html
    assert "affine-lens" in result.output and "surprisal in nats" in result.output


def test_tuned_lens_command_resumes(tiny_dir, text_file, tmp_path):
    args = ["fit-lens", "--model", tiny_dir, "--text", text_file, "--kind", "tuned", "--out", str(tmp_path / "t"),
            "--samples", "200", "--max-tokens", "32", "--steps", "3", "--batch-size", "16"]
    assert _invoke(*args).exit_code == 0
    assert (tmp_path / "t" / "checkpoint.safetensors").is_file()
    again = _invoke(*args[:-4], "--steps", "5", "--batch-size", "16")
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output
    config = json.loads((tmp_path / "t" / "lens.json").read_text())
    assert config["kind"] == "tuned" and len(config["training"]["losses"]) == 5


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--text", "missing.txt"], "no such text file"),
        (["--methods", "bogus"], "unknown method"),
        (["--json", "out.csv"], "must end in .json"),
        (["--plot", "out.gif"], "must end in .html"),
        (["--lens", "."], "not a lens folder"),
        (["--layers", "40"], "out of range"),
    ],
)
def test_eval_bad_input_exits_2(tiny_dir, text_file, tmp_path, args, fragment):
    base = ["eval", "next-token", "--model", tiny_dir, "--samples", "2"]
    if "--text" not in args:
        base += ["--text", text_file]
    result = _invoke(*base, *[str(tmp_path / a) if a.endswith((".csv", ".gif")) else a for a in args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_png_plot_without_kaleido_fails_before_running(tiny_dir, text_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    result = _invoke("eval", "next-token", "--model", tiny_dir, "--text", text_file, "--plot", str(tmp_path / "f.png"))
    assert result.exit_code == 2 and "kaleido" in result.output
    assert not (tmp_path / "f.png").exists()


def test_eval_refuses_a_lens_of_another_model(tiny_dir, text_file, tmp_path):
    other = tmp_path / "other-model"
    lm = tiny_model("llama", seed=5)
    lm.hf.save_pretrained(other)
    lm.tokenizer.save_pretrained(other)
    lens_dir = tmp_path / "lens"
    assert _invoke("fit-lens", "--model", str(other), "--text", text_file, "--out", str(lens_dir),
                   "--samples", "100").exit_code == 0
    result = _invoke("eval", "next-token", "--model", tiny_dir, "--text", text_file, "--lens", str(lens_dir),
                     "--samples", "2")
    assert result.exit_code == 2
    assert "fitted on another model" in result.output


def test_fit_lens_bad_kind_exits_2(tiny_dir, text_file):
    result = _invoke("fit-lens", "--model", tiny_dir, "--text", text_file, "--kind", "linear")
    assert result.exit_code == 2 and "unknown lens kind" in result.output
