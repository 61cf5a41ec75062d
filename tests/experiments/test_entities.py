"""Experiment 3 (entity description): entity files of every shape, selection, descriptions, scores, the command."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.data.entities import (
    Entity,
    popqa_subject,
    read_entities,
    select_entities,
    wikides_entity,
)
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.entities import (
    DESCRIPTION_STOP,
    clean_description,
    describe_entities,
    description_examples,
    description_figure,
    self_descriptions,
    self_prompt,
    summarize_descriptions,
)
from patchscopes.experiments.scoring import rouge_scores

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

POPQA_ROWS = [
    {"id": 1, "subj": "Henry Feilden", "prop": "occupation", "obj": "politician", "s_pop": 58,
     "question": "What is Henry Feilden's occupation?"},
    {"id": 2, "subj": "Herlyn Espinal", "prop": "occupation", "obj": "journalist", "s_pop": 88,
     "question": "What is Herlyn Espinal's occupation?"},
    {"id": 3, "subj": "Henry Feilden", "prop": "country", "obj": "England", "s_pop": 58,
     "question": "In what country is Henry Feilden?"},
    {"id": 4, "subj": "Lima", "prop": "capital of", "obj": "Peru", "s_pop": 90000,
     "question": "What is Lima the capital of?"},
]
WIKIDES_ROWS = [
    {"source": "Noel O'Flynn (born 1 December 1951) is a former Irish politician.", "candidate": ["human"],
     "target": "Irish Fianna Fáil politician"},
    {"source": "Honaine is a town and commune in Tlemcen Province in northwestern Algeria.", "candidate": [],
     "target": "municipality of Algeria"},
    {"source": "Svein Engen, a Norwegian biathlete, was born in 1953.", "candidate": [],
     "target": "Norwegian biathlete"},
    {"source": "The 2002 Illinois Fighting Illini football team represented the University of Illinois in 2002.",
     "candidate": [], "target": "American college football season"},
]


# -- entity files ----------------------------------------------------------------------------------------------
def test_popqa_csv_tsv_json_and_json_lines(tmp_path):
    frame = pd.DataFrame(POPQA_ROWS)
    frame.to_csv(tmp_path / "popqa.csv", index=False)
    frame.to_csv(tmp_path / "popqa.tsv", sep="\t", index=False)
    (tmp_path / "popqa.json").write_text(json.dumps(POPQA_ROWS))
    (tmp_path / "popqa.jsonl").write_text("\n".join(json.dumps(r) for r in POPQA_ROWS) + "\n")
    for name in ("popqa.csv", "popqa.tsv", "popqa.json", "popqa.jsonl"):
        found = read_entities(tmp_path / name)
        assert found.kind == "popqa", name
        assert [e.name for e in found] == ["Henry Feilden", "Herlyn Espinal", "Lima"], name
        assert [e.popularity for e in found] == [58.0, 88.0, 90000.0], name
        assert all(e.reference is None for e in found), name
        assert (found.rows, found.duplicates, found.skipped) == (4, 1, 0), name
        assert found.with_reference == 0 and found.with_popularity == 3
        assert "0 with a reference description" in found.summary()
        assert found.entities[0].origin == f"{name}:1"


def test_popqa_questions_without_subject_column(tmp_path):
    data = {"name": "popqa", "task_type": "f1_match",
            "dev": [{"input": "What sport does José Diogo Macedo Silva play?", "output": "[\"football\"]", "id": 1,
                     "s_pop": 41, "o_pop": 197767},
                    {"input": "Who was the director of Pilgrimage?", "output": "[\"John Ford\"]", "id": 2,
                     "s_pop": 422, "o_pop": 35178}],
            "test": [{"input": "What is the capital of Canada?", "output": "[\"Ottawa\"]", "id": 3, "s_pop": 816653,
                      "o_pop": 1},
                     {"input": "Why is the sky blue?", "output": "[]", "id": 4, "s_pop": 5, "o_pop": 1}]}
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(data))
    found = read_entities(path)
    assert found.kind == "popqa-questions"
    assert [(e.name, e.popularity) for e in found] == [("José Diogo Macedo Silva", 41.0), ("Pilgrimage", 422.0),
                                                      ("Canada", 816653.0)]
    assert found.skipped == 1
    assert popqa_subject("What is Henry Feilden's occupation?") == "Henry Feilden"
    assert popqa_subject("What is Lima the capital of?") == "Lima"
    assert popqa_subject("Who is the mother of  Kate?") == "Kate"
    assert popqa_subject("Why?") is None


def test_wikides_json_lines(tmp_path):
    path = tmp_path / "wikides.json"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in WIKIDES_ROWS) + "\n")
    found = read_entities(path)
    assert found.kind == "wikides"
    assert [(e.name, e.reference) for e in found] == [
        ("Noel O'Flynn", "Irish Fianna Fáil politician"), ("Honaine", "municipality of Algeria"),
        ("Svein Engen", "Norwegian biathlete")]
    assert found.skipped == 1  # the sentence about a football season is no name
    assert all(e.popularity is None for e in found)
    assert wikides_entity("Podłęże Królewskie [pɔdˈwɛ̃ʐɛ] is a village") == "Podłęże Królewskie"
    assert wikides_entity("Acullico") is None


def test_plain_entity_file_with_references(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"entity": ["Paris", "Tokyo", " "], "reference": ["capital of France", "", "x"],
                  "popularity": [10, None, 3]}).to_csv(path, index=False)
    found = read_entities(path)
    assert found.kind == "entities"
    assert [(e.name, e.reference, e.popularity) for e in found] == [("Paris", "capital of France", 10.0),
                                                                   ("Tokyo", None, None)]
    assert found.skipped == 1


@pytest.mark.parametrize("content, name, match", [
    ('[{"title": "a", "text": "b"}]', "odd.json", "no known shape"),
    ("", "empty.csv", "could not read|no rows"),
    ('{"source": "A is b", "target": "c"}\nnot json\n', "broken.jsonl", "broken.jsonl:2 is not JSON"),
    ("[1, 2, 3]", "numbers.json", "does not hold records"),
    ("subj,s_pop\n", "header.csv", "no rows"),
    ("whatever", "entities.txt", "unknown entity file type"),
    ('[{"subj": ""}]', "blank.json", "no usable entity"),
])
def test_bad_entity_files(tmp_path, content, name, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PatchscopesError, match=match):
        read_entities(path)


def test_missing_entity_file_and_data_dir(tmp_path, monkeypatch):
    with pytest.raises(PatchscopesError, match="no such entity file"):
        read_entities(tmp_path / "nope.csv")
    (tmp_path / "popqa.json").write_text(json.dumps(POPQA_ROWS))
    monkeypatch.setenv("PATCHSCOPES_DATA_DIR", str(tmp_path))
    assert len(read_entities("popqa.json")) == 3


# -- selection ---------------------------------------------------------------------------------------------------
def test_select_entities_splits():
    items = [Entity(f"e{i}", popularity=float(i)) for i in range(20)]
    extremes = select_entities(items, 6)
    assert [(e.name, e.group) for e in extremes] == [("e0", "rare"), ("e1", "rare"), ("e2", "rare"),
                                                     ("e17", "popular"), ("e18", "popular"), ("e19", "popular")]
    median = select_entities(items, 6, split="median", seed=1)
    assert all(e.popularity < 10 for e in median if e.group == "rare")
    assert all(e.popularity >= 10 for e in median if e.group == "popular")
    assert [e.group for e in median].count("rare") == 3
    assert select_entities(items, 6, split="median", seed=1) == median
    randomly = select_entities(items, 5, split="random", seed=3)
    assert len(randomly) == 5 and {e.group for e in randomly} == {"all"}
    no_pop = select_entities([Entity("a"), Entity("b"), Entity("c")], 2)
    assert len(no_pop) == 2 and {e.group for e in no_pop} == {"all"}
    assert len(select_entities(items, None)) == 20
    with pytest.raises(PatchscopesError, match="unknown popularity split"):
        select_entities(items, 4, split="top")
    with pytest.raises(PatchscopesError, match="at least 1"):
        select_entities(items, 0)


# -- descriptions ------------------------------------------------------------------------------------------------
def test_clean_description():
    assert clean_description(": Italian artist, Paris: capital of France") == "Italian artist"
    assert clean_description(" Coates: American actor") == "American actor"
    assert clean_description(": The Golden Goat: American football team") == "American football team"
    assert clean_description(": a city\nTokyo: ...") == "a city"
    assert clean_description("American actor") == "American actor"
    assert clean_description(", Paris: city") == ""
    assert clean_description("") == ""
    assert DESCRIPTION_STOP == (",", "\n")
    assert self_prompt("Syria: country, x", "Paris") == "Syria: country, Paris"
    assert self_prompt("x marks, x", "Rome") == "x marks, Rome"
    with pytest.raises(PatchscopesError, match="no placeholder"):
        self_prompt("Syria: country", "Paris")


ENTITIES = [Entity("Paris", "capital of France", 5.0, "rare"), Entity("Tokyo", "capital of Japan", 7.0, "rare"),
            Entity("Ada Lovelace", None, 900.0, "popular"), Entity("Rome", "capital of Italy", 1000.0, "popular")]


def test_descriptions_equal_reference_engine(tiny_llama):
    lm = tiny_llama
    samples = describe_entities(lm, ENTITIES, layers="0,2", max_new_tokens=8, sbert=False)
    assert len(samples) == 8
    assert list(samples["layer"]) == [0, 2] * 4 and list(samples["target_layer"]) == [0, 2] * 4
    scopes = [ps.Patchscope(ps.Source(e.name, layer, -1), ps.Target(ps.ENTITY_DESCRIPTION_PROMPT, layer, "x"),
                            ps.Generate(max_new_tokens=8, stop=(",", "\n"))) for e in ENTITIES for layer in (0, 2)]
    reference = ps.run(scopes, lm, engine="reference")
    assert list(samples["generated"]) == [r.generated_text for r in reference]
    assert list(samples["description"]) == [clean_description(r.generated_text) for r in reference]
    for row in samples.itertuples():
        if not isinstance(row.reference, str):
            assert math.isnan(row.rougeL) and not isinstance(row.reference_kind, str)
        else:
            assert row.rougeL == pytest.approx(rouge_scores(row.description, row.reference)["rougeL"])
            assert row.reference_kind == "file"
        assert math.isnan(row.sbert)
    assert samples.attrs["scored_entities"] == 3 and samples.attrs["pairs"] == [(0, 0), (2, 2)]


def test_self_reference(tiny_llama):
    lm = tiny_llama
    samples = describe_entities(lm, ENTITIES[:2], layers=[1], max_new_tokens=6, reference="self", sbert=False)
    own = self_descriptions(lm, ["Paris", "Tokyo"], max_new_tokens=6)
    unpatched = ps.run([ps.Patchscope(ps.Source("Paris", 0, -1),
                                      ps.Target(self_prompt(ps.ENTITY_DESCRIPTION_PROMPT, "Paris"), 0, -1,
                                                mapping=lambda h: h * 0),
                                      ps.Generate(max_new_tokens=6, stop=(",", "\n")))], lm, baseline=True)
    assert own["Paris"] == clean_description(unpatched[0].baseline.generated_text)
    assert list(samples["reference"]) == [own["Paris"], own["Tokyo"]]
    assert set(samples["reference_kind"]) == {"self"}
    assert samples["rougeL"].notna().all()


def test_description_options_are_checked(tiny_llama):
    with pytest.raises(PatchscopesError, match="no entities"):
        describe_entities(tiny_llama, [], layers="0")
    with pytest.raises(PatchscopesError, match="unknown reference"):
        describe_entities(tiny_llama, ENTITIES, layers="0", reference="wiki")
    with pytest.raises(PatchscopesError, match="no placeholder"):
        describe_entities(tiny_llama, ENTITIES, layers="0", prompt="Syria: country, y")
    with pytest.raises(PatchscopesError, match="out of range"):
        describe_entities(tiny_llama, ENTITIES, layers="7")


def test_summary_examples_and_figure(tmp_path):
    rows = []
    for name, group, ref in (("a", "rare", "x y"), ("b", "rare", "x"), ("c", "popular", "y"), ("d", "popular", None)):
        for layer, score in ((0, 0.2), (1, 0.6)):
            rows.append({"entity": name, "group": group, "popularity": 1.0, "layer": layer, "target_layer": layer,
                         "mapping": "identity", "generated": f": d{layer}", "description": f"d{layer}" if ref else "",
                         "reference": ref, "reference_kind": "file" if ref else None,
                         "rougeL": score if ref else math.nan, "rouge1": score if ref else math.nan,
                         "sbert": score / 2 if ref else math.nan})
    samples = pd.DataFrame(rows)
    summary = summarize_descriptions(samples)
    assert list(summary["group"]) == ["rare", "rare", "popular", "popular", "all", "all"]
    popular = summary[(summary["group"] == "popular") & (summary["layer"] == 1)].iloc[0]
    assert popular["rougeL"] == pytest.approx(0.6) and popular["scored"] == 1 and popular["n"] == 2
    assert popular["empty"] == pytest.approx(0.5) and math.isnan(popular["rougeL_sem"])
    everyone = summary[(summary["group"] == "all") & (summary["layer"] == 0)].iloc[0]
    assert everyone["sbert"] == pytest.approx(0.1) and everyone["scored"] == 3
    examples = description_examples(samples, per_group=1)
    assert list(examples.columns) == ["a", "c"]
    assert list(examples.index) == ["0", "1", "reference"]
    assert examples.loc["1", "a"] == "d1" and examples.loc["reference", "c"] == "y"
    fig = description_figure(summary)
    names = {t.name for t in fig.data if t.name}
    assert names == {"rare (2 entities)", "popular (2 entities)"}
    out = ps.plots.save_figure(fig, tmp_path / "fig3.html")
    assert out.stat().st_size > 100_000  # plotly.js is embedded


# -- the command -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wikides_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "wikides.json"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in WIKIDES_ROWS) + "\n")
    return path


def test_eval_entities_command(tiny_dir, wikides_file, tmp_path):
    out, fig = tmp_path / "entities.json", tmp_path / "fig3.html"
    result = runner.invoke(app, ["eval", "entities", "--model", str(tiny_dir), "--entities", str(wikides_file),
                                 "--layers", "0,1", "--n", "3", "--max-new-tokens", "5", "--json", str(out),
                                 "--plot", str(fig), "--threads", "1"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "entity description" in result.output and "example descriptions" in result.output
    records = json.loads(out.read_text())
    assert len(records) == 6
    for rec in records:
        assert {"entity", "layer", "description", "rougeL", "rouge1", "sbert", "reference", "group",
                "generated", "model"} <= set(rec)
        assert rec["reference"] is not None and 0.0 <= rec["rougeL"] <= 1.0 and -1.0 <= rec["sbert"] <= 1.0
    assert {r["entity"] for r in records} == {"Noel O'Flynn", "Honaine", "Svein Engen"}
    assert fig.is_file()


def test_eval_entities_without_references(tiny_dir, tmp_path):
    path = tmp_path / "popqa.json"
    path.write_text(json.dumps(POPQA_ROWS))
    out = tmp_path / "popqa-out.json"
    result = runner.invoke(app, ["eval", "entities", "--model", str(tiny_dir), "--entities", str(path),
                                 "--layers", "1", "--n", "2", "--max-new-tokens", "3", "--no-sbert",
                                 "--json", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "has no reference descriptions" in result.output and "not scored" in result.output
    records = json.loads(out.read_text())
    assert [(r["entity"], r["group"]) for r in records] == [("Henry Feilden", "rare"), ("Lima", "popular")]
    assert all(r["rougeL"] is None and r["sbert"] is None for r in records)


@pytest.mark.parametrize("extra, match", [
    (["--entities", "/nonexistent/file.json"], "no such entity file"),
    (["--split", "top"], "unknown --split"),
    (["--reference", "wiki"], "unknown --reference"),
    (["--json", "out.txt"], "must end in .json"),
    (["--plot", "out.gif"], "must end in .html"),
    (["--layers", "99"], "out of range"),
    (["--engine", "fast"], "unknown engine"),
])
def test_eval_entities_bad_input(tiny_dir, wikides_file, extra, match):
    args = ["eval", "entities", "--model", str(tiny_dir), "--entities", str(wikides_file), "--n", "2",
            "--max-new-tokens", "2", "--no-sbert", *extra]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 2, result.output
    assert match.split("|")[0] in result.output.replace("\n", " ") or match in result.output


def test_eval_entities_png_needs_kaleido(tiny_dir, wikides_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    result = runner.invoke(app, ["eval", "entities", "--model", str(tiny_dir), "--entities", str(wikides_file),
                                 "--plot", str(tmp_path / "f.png")], env=ENV)
    assert result.exit_code == 2
    assert "kaleido" in result.output and not (tmp_path / "f.png").exists()


def test_eval_entities_plot_needs_scores(tiny_dir, tmp_path):
    path = tmp_path / "popqa.csv"
    pd.DataFrame(POPQA_ROWS).to_csv(path, index=False)
    result = runner.invoke(app, ["eval", "entities", "--model", str(tiny_dir), "--entities", str(path),
                                 "--plot", str(tmp_path / "f.html")], env=ENV)
    assert result.exit_code == 2
    assert "nothing to plot" in result.output
