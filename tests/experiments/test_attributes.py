"""Experiment 2 (attribute extraction): hidden states, the experiment against a per-sample reference
computation, the Table 2 aggregation, the figure and the ``eval attributes`` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.data.relations import AttributeSample, Relation, RelationSample, mentions
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.attributes import (
    AttributeResults,
    attributes_figure,
    default_target_layers,
    evaluate_attributes,
    subject_states,
)
from patchscopes.runs import RunOptions

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def toy_relation() -> Relation:
    colors = ["red", "blue", "green"]
    return Relation("toy color", "toy_color", [RelationSample(f"thing{i}", colors[i % 3]) for i in range(9)],
                    prompt_templates=["The color of {} is", "Look: {} has the color"])


def write_relation(folder: Path, name: str = "toy_color.json") -> Path:
    data = {"name": "toy color", "prompt_templates": ["The color of {} is", "Look: {} has the color"],
            "properties": {"relation_type": "commonsense"},
            "samples": [{"subject": f"thing{i}", "object": ["red", "blue", "green"][i % 3]} for i in range(9)]}
    path = folder / name
    path.write_text(json.dumps(data))
    return path


# -- hidden states -----------------------------------------------------------------------------------------
def test_subject_states_equal_hugging_face_hidden_states(tiny_llama):
    lm = tiny_llama
    samples = [AttributeSample("ab", "o", (), "xx ab", 5, "b", "template"),
               AttributeSample("cd", "o", (), "long text with cd in it", 16, "d", "template")]
    states = subject_states(lm, samples, [0, 1], batch_size=2)  # padded together
    assert states.shape == (2, 2, lm.hidden_size) and states.dtype == np.float32
    for k, s in enumerate(samples):
        ids = torch.tensor([lm.encode(s.text)])
        with torch.no_grad():
            hidden = lm.hf(ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate([0, 1]):  # layer l = hidden_states[l + 1] below the last layer
            assert np.allclose(states[k, j], hidden[layer + 1][0, s.position].numpy(), atol=1e-5)


def test_default_target_layers_are_the_first_half():
    assert default_target_layers(30) == [0, 3, 6, 9, 12]
    assert default_target_layers(3) == [0]
    assert default_target_layers(1) == [0]


# -- the experiment ----------------------------------------------------------------------------------------
def test_experiment_equals_a_per_sample_reference_computation(tiny_llama):
    lm = tiny_llama
    results = evaluate_attributes(lm, [toy_relation()], source_layers="0,2", target_layers="0,1", max_samples=4,
                                  fact_filter=False, max_new_tokens=4, seed=3)
    counts = results.counts.iloc[0]
    assert counts["facts"] == 9 and counts["samples_found"] == 18 and counts["contexts_template"] == 18
    assert counts["samples_known"] == 18 and counts["probe_samples"] == 18 and counts["patchscope_samples"] == 4
    assert results.fact_checks.empty  # no filter
    used = results.samples[results.samples["patchscope"]]
    assert len(results.samples) == 18 and len(used) == 4 and len(results.patchscope) == 4 * 2 * 2
    # Every (sample, l, l*) run alone through the reference engine gives the same text and verdict.
    expected = []
    for s in used.itertuples():
        for layer in (0, 2):
            for t_layer in (0, 1):
                scope = ps.Patchscope(ps.Source(s.source_text, layer, s.source_position),
                                      ps.Target("The color of x is", t_layer, "x"), ps.Generate(max_new_tokens=4))
                text = ps.run(scope, lm, engine="reference")[0].generated_text
                expected.append((s.sample, layer, t_layer, text, mentions(text, s.object)))
    got = results.patchscope[["sample", "source_layer", "target_layer", "generated_text", "correct"]]
    assert [tuple(r) for r in got.itertuples(index=False)] == expected
    pairs = results.pair_accuracy()
    for (layer, t_layer), group in pd.DataFrame(expected, columns=["s", "l", "t", "text", "ok"]).groupby(["l", "t"]):
        row = pairs[(pairs["source_layer"] == layer) & (pairs["target_layer"] == t_layer)].iloc[0]
        assert row["accuracy"] == group["ok"].mean() and row["n"] == 4
    # The probe ran on all 18 samples at both source layers.
    assert sorted(results.probe["layer"].unique()) == [0, 2]
    assert results.probe.groupby("layer")["n_test"].sum().tolist() == [18, 18]
    table = results.summary()
    assert table.loc[0, "samples"] == 4 and table.loc[0, "probe_samples"] == 18 and table.loc[0, "classes"] == 3
    assert table.loc[0, "majority"] == pytest.approx(1 / 3)  # three colours, six samples each


def test_reference_engine_gives_the_same_results(tiny_gpt2):
    options = dict(source_layers="1", target_layers="0,2", max_samples=3, fact_filter=False, max_new_tokens=3)
    batched = evaluate_attributes(tiny_gpt2, [toy_relation()], **options)
    reference = evaluate_attributes(tiny_gpt2, [toy_relation()], options=RunOptions(engine="reference"), **options)
    assert batched.patchscope["generated_text"].tolist() == reference.patchscope["generated_text"].tolist()


def test_the_fact_filter_on_smollm2(smollm2):
    rel = Relation("country capital city", "country_capital_city",
                   [RelationSample("France", "Paris"), RelationSample("Germany", "Berlin"),
                    RelationSample("Peru", "Lima"), RelationSample("Atlantis", "Poseidonia")],
                   prompt_templates=["The capital city of {} is", "People in {} live"],
                   target_prompt="The capital city of x")
    results = evaluate_attributes(smollm2, [rel], source_layers="6,12", target_layers="3", max_new_tokens=10,
                                  contexts=["template"], folds=2)
    checks = results.fact_checks.set_index("subject")
    assert checks.loc["France", "known"] and checks.loc["Germany", "known"]
    assert not checks.loc["Atlantis", "known"]
    assert checks.loc["France", "prompt"] == "The capital city of France"
    counts = results.counts.iloc[0]
    known = int(checks["known"].sum())
    assert counts["facts_known"] == known and counts["samples_known"] == 2 * known
    assert set(results.samples["subject"]) == set(checks.index[checks["known"]])
    # SmolLM2 reads the capital back from the patched country for at least one sample.
    assert results.patchscope["correct"].any()
    table = results.summary()
    assert 0 < table.loc[0, "patchscope_mean"] <= 1


def test_relations_without_known_samples_are_reported(tiny_llama):
    results = evaluate_attributes(tiny_llama, [toy_relation()], source_layers="0", target_layers="0",
                                  max_new_tokens=2)
    counts = results.counts.iloc[0]
    assert counts["facts_known"] == 0 and counts["patchscope_samples"] == 0 and "fewer than 3" in counts["probe_note"]
    table = results.summary()
    assert math.isnan(table.loc[0, "patchscope_mean"]) and table.loc[0, "winner"] == "n/a"
    levels = {(r["level"], r["method"]) for r in results.records()}
    assert levels == {("relation", "probe"), ("relation", "patchscope")}


def test_experiment_option_errors(tiny_llama):
    rel = toy_relation()
    with pytest.raises(PatchscopesError, match="max_samples"):
        evaluate_attributes(tiny_llama, [rel], max_samples=0)
    with pytest.raises(PatchscopesError, match="no placeholder"):
        evaluate_attributes(tiny_llama, [rel], target_prompts={"toy_color": "The color is"})
    with pytest.raises(PatchscopesError, match="target layer 7 is out of range"):
        evaluate_attributes(tiny_llama, [rel], target_layers="7")
    with pytest.raises(PatchscopesError, match="probe cross-validation"):
        evaluate_attributes(tiny_llama, [rel], probe_cv="layers")  # type: ignore[arg-type]


# -- Table 2 aggregation -----------------------------------------------------------------------------------
def synthetic_results() -> AttributeResults:
    """Two relations, 2 samples, source layers 0 and 3, target layers 0 and 1, hand-made verdicts."""
    rows = []
    verdicts = {  # (relation, sample, l) -> (correct at l*=0, correct at l*=1)
        ("a", 0, 0): (True, False), ("a", 1, 0): (False, False),
        ("a", 0, 3): (False, True), ("a", 1, 3): (True, True),
        ("b", 0, 0): (False, False), ("b", 1, 0): (False, False),
        ("b", 0, 3): (True, False), ("b", 1, 3): (False, False),
    }
    for (rel, sample, layer), oks in verdicts.items():
        for t_layer, ok in zip((0, 1), oks):
            rows.append((rel, sample, layer, t_layer, "text", ok))
    patch = pd.DataFrame(rows, columns=["relation", "sample", "source_layer", "target_layer", "generated_text",
                                        "correct"])
    probe = pd.DataFrame([(rel, layer, fold, acc, 2, 4, 2) for rel, accs in (("a", (0.2, 0.4)), ("b", (0.6, 0.5)))
                          for layer, acc in zip((0, 3), accs) for fold in range(3)],
                         columns=["relation", "layer", "fold", "accuracy", "n_test", "n_train", "classes"])
    counts = pd.DataFrame([{"relation": r, "key": k, "patchscope_samples": 2, "probe_samples": 6, "probe_classes": 3}
                           for r, k in (("a", "country_currency"), ("b", "b"))])
    return AttributeResults(counts, pd.DataFrame(), pd.DataFrame(), patch, probe,
                            attrs={"source_layers": [0, 3], "target_layers": [0, 1], "model": "m"})


def test_table2_aggregation_is_correct_for_some_target_layer():
    results = synthetic_results()
    pairs = results.pair_accuracy().set_index(["relation", "source_layer", "target_layer"])["accuracy"]
    assert pairs[("a", 0, 0)] == 0.5 and pairs[("a", 0, 1)] == 0.0 and pairs[("a", 3, 1)] == 1.0
    layers = results.layer_accuracy().set_index(["relation", "method", "layer"])
    # Some l*: relation a, layer 0: sample 0 yes, sample 1 no -> 0.5; layer 3: both -> 1.0.
    assert layers.loc[("a", "patchscope", 0), "accuracy"] == 0.5
    assert layers.loc[("a", "patchscope", 3), "accuracy"] == 1.0
    assert layers.loc[("b", "patchscope", 3), "accuracy"] == 0.5
    assert layers.loc[("a", "probe", 3), "accuracy"] == pytest.approx(0.4)
    assert layers.loc[("a", "probe", 3), "n"] == 6
    table = results.summary().set_index("relation")
    assert table.loc["a", "patchscope_mean"] == 0.75 and table.loc["a", "patchscope_std"] == 0.25
    assert table.loc["a", "probe_mean"] == pytest.approx(0.3) and table.loc["a", "probe_std"] == pytest.approx(0.1)
    assert table.loc["a", "paper_probe"] == 17.7 and table.loc["a", "paper_patchscope"] == 51.0
    assert math.isnan(table.loc["b", "paper_probe"])
    # Paired t-test over the two layers, Bonferroni over the two relations.
    from scipy import stats

    p = float(stats.ttest_rel([0.5, 1.0], [0.2, 0.4]).pvalue)
    assert table.loc["a", "p_value"] == pytest.approx(p)
    assert table.loc["a", "p_bonferroni"] == pytest.approx(min(1.0, 2 * p))
    assert table.loc["a", "winner"] == ("patchscope" if 2 * p < 0.05 else "tie")


def test_records_have_the_documented_fields():
    records = synthetic_results().records()
    for rec in records:
        assert {"relation", "method", "source_layer", "target_layer", "accuracy", "n", "level"} <= set(rec)
        assert rec["method"] in ("patchscope", "probe")
        if rec["method"] == "probe":
            assert rec["target_layer"] is None
    pair = [r for r in records if r["level"] == "pair"]
    assert len(pair) == 2 * 2 * 2 and all(isinstance(r["target_layer"], int) for r in pair)
    top = [r for r in records if r["level"] == "relation" and r["relation"] == "a"]
    assert {r["method"]: r["paper_accuracy"] for r in top} == {"probe": 17.7, "patchscope": 51.0}
    json.dumps(records)  # JSON-safe


def test_figure_has_a_heatmap_per_relation(tmp_path):
    fig = attributes_figure(synthetic_results())
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2
    assert list(heatmaps[0].x) == ["0", "1", "any l*", "probe"] and list(heatmaps[0].y) == ["0", "3"]
    assert list(heatmaps[0].z[0]) == [0.5, 0.0, 0.5, pytest.approx(0.2)]  # l=0: l*=0, l*=1, some l*, probe
    assert list(heatmaps[0].z[1]) == [0.5, 1.0, 1.0, pytest.approx(0.4)]
    ps.plots.save_figure(fig, tmp_path / "f.html")
    assert (tmp_path / "f.html").stat().st_size > 100_000  # plotly.js embedded


# -- the command -------------------------------------------------------------------------------------------
def invoke(*args: str):
    return runner.invoke(app, ["eval", "attributes", *args], env=ENV)


def test_cli_runs_and_writes_json_and_figure(tiny_dir, tmp_path):
    rel = write_relation(tmp_path)
    out = tmp_path / "out.json"
    result = invoke("--model", tiny_dir, "--relations", str(rel), "--no-fact-filter", "--source-layers", "0,2",
                    "--target-layers", "0,1", "--max-samples", "3", "--max-new-tokens", "3", "--json", str(out),
                    "--plot", str(tmp_path / "f.html"), "--details", str(tmp_path / "d.csv"), "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "toy color" in result.output and "patchscope" in result.output and "probe" in result.output
    records = json.loads(out.read_text())
    for rec in records:
        assert {"relation", "method", "source_layer", "target_layer", "accuracy", "n", "model"} <= set(rec)
    pair = [r for r in records if r["level"] == "pair"]
    assert len(pair) == 4 and {r["n"] for r in pair} == {3}
    probe = [r for r in records if r["method"] == "probe" and r["level"] == "layer"]
    assert [r["source_layer"] for r in probe] == [0, 2] and all(r["target_layer"] is None for r in probe)
    assert (tmp_path / "f.html").exists()
    details = pd.read_csv(tmp_path / "d.csv")
    assert len(details) == 3 * 2 * 2 and {"generated_text", "correct", "subject", "source_text"} <= set(details)


def test_cli_takes_several_paths_after_one_option_and_a_tsv(tiny_dir, tmp_path):
    rel = write_relation(tmp_path)
    tsv = tmp_path / "toy_tsv.tsv"
    pd.DataFrame({"subject": ["Oslo", "Rome", "Lima"], "object": ["Norway", "Italy", "Peru"],
                  "prompt_target": ["The country of x"] * 3,
                  "prompt_source": [" we flew to Oslo today", " Rome was built", " in Lima the"]}).to_csv(tsv, sep="\t")
    out = tmp_path / "out.json"
    result = invoke("--model", tiny_dir, "--relations", str(rel), str(tsv), "--no-fact-filter", "-l", "1", "-t", "0",
                    "--max-new-tokens", "2", "--json", str(out))
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert {r["relation"] for r in records} == {"toy color", "toy tsv"}
    counts = {r["relation"]: r["n"] for r in records if r["level"] == "relation" and r["method"] == "patchscope"}
    assert counts == {"toy color": 18, "toy tsv": 3}


def test_cli_with_the_filter_reports_zero_known(tiny_dir, tmp_path):
    result = invoke("--model", tiny_dir, "--relations", str(write_relation(tmp_path)), "-l", "0", "-t", "0",
                    "--max-new-tokens", "2", "--plot", str(tmp_path / "f.html"))
    assert result.exit_code == 0, result.output
    assert "0/9" in result.output and "no figure" in result.output


@pytest.mark.parametrize("make, args, fragments", [
    (None, ["--relations", "missing.json"], ["no such relation file or folder"]),
    ("wrong", ["--relations", "{wrong}"], ["not a relation file", "no 'samples'", "hint"]),
    ("good", ["--relations", "{good}", "--contexts", "web"], ["unknown --contexts web"]),
    ("good", ["--relations", "{good}", "--json", "out.txt"], ["must end in .json"]),
    ("good", ["--relations", "{good}", "--target-prompt", "The color is"], ["no placeholder 'x'"]),
    ("good", ["--relations", "{good}", "--probe-cv", "layers"], ["unknown --probe-cv"]),
])
def test_cli_bad_input_exits_2(tiny_dir, tmp_path, make, args, fragments):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "r", "facts": [{"subject": "a", "object": "b"}]}))
    good = write_relation(tmp_path)
    args = [a.format(wrong=wrong, good=good) for a in args]
    result = invoke("--model", tiny_dir, "--no-fact-filter", "-l", "0", "-t", "0", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_target_prompt_options_parse():
    from patchscopes.cli.eval_attributes_cmd import parse_target_prompts

    assert parse_target_prompts(None) is None
    assert parse_target_prompts(["adj_antonym=The word opposite to x is", "The color of x"]) == {
        "adj_antonym": "The word opposite to x is", "*": "The color of x"}
    assert parse_target_prompts(["x = the answer"]) == {"*": "x = the answer"}  # '=' inside a bare prompt
