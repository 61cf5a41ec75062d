"""Relation files: the JSON schema, the paper's TSVs, folders, duplicates, windows attached by key, and the
real data where present."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from patchscopes.data.contexts import locate_samples, subject_contexts
from patchscopes.data.relation_loaders import attach_windows, load_relation, load_relations, relation_files
from patchscopes.data.relation_types import RelationSample
from patchscopes.data.target_prompts import PAPER_TARGET_PROMPTS, check_target_prompt
from patchscopes.errors import PatchscopesError

DATA = Path(os.environ.get("PATCHSCOPES_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


# -- loaders -----------------------------------------------------------------------------------------------
def test_json_relation_in_the_relations_schema(tmp_path, write_json_relation):
    rel = load_relation(write_json_relation(tmp_path))
    assert rel.name == "country capital city" and rel.key == "country_capital_city"
    assert [(s.subject, s.object) for s in rel.samples] == [("France", "Paris"), ("Brazil", "Brasília"),
                                                            ("Japan", "Tokyo")]  # duplicate dropped, \\u decoded
    assert rel.samples[2].aliases == ("Tokio",)
    assert rel.prompt_templates[0] == "The capital city of {} is"
    assert rel.properties["range_name"] == "city"
    # One of the paper's relations: its target prompt is the paper's.
    assert rel.resolved_target_prompt() == "The capital city of x"
    assert rel.verbalize("France") == "The capital city of France"


def test_json_relation_of_another_name_derives_its_target_prompt(tmp_path, write_json_relation):
    path = write_json_relation(tmp_path, "river_country", name="river country",
                               prompt_templates=["{} flows through", "The river {} is in"])
    rel = load_relation(path)
    assert rel.key == "river_country" and rel.target_prompt is None
    assert rel.resolved_target_prompt() == "x flows through"
    assert rel.verbalize("The Nile") == "The Nile flows through"


def test_json_names_map_to_the_paper_keys(tmp_path, write_json_relation):
    path = write_json_relation(tmp_path, "phase", name="substance phase of matter",
                               prompt_templates=["{}'s phase of matter at room temperature is a"])
    rel = load_relation(path)
    assert rel.key == "substance_phase"
    assert rel.resolved_target_prompt() == PAPER_TARGET_PROMPTS["substance_phase"]


def test_tsv_relation_keeps_windows_and_the_meant_occurrence(tmp_path, write_tsv_relation):
    rel = load_relation(write_tsv_relation(tmp_path))
    assert rel.key == "country_currency" and rel.name == "country currency"
    assert rel.target_prompt == "The official currency of x"
    assert [(s.subject, s.object) for s in rel.samples] == [("Japan", "Yen"), ("Peru", "Sol")]
    windows = rel.windows["Japan"]
    assert [w.text for w in windows] == [" Japan and Japan again today", " trade with Japan grew"]
    assert windows[0].subject_end == len(" Japan and Japan") and windows[0].kind == "wikitext"
    assert "Peru" not in rel.windows  # no window: the pair stays, without a context


@pytest.mark.parametrize("changes, fragment", [
    ({"samples": []}, "non-empty list"),
    ({"samples": [{"subject": "France"}]}, "sample 0"),
    ({"samples": [{"subject": "France", "object": ""}]}, "non-empty strings"),
    ({"prompt_templates": ["The capital city of France is"]}, "has no '{}'"),
    ({"prompt_templates": "The capital of {}"}, "list of strings"),
])
def test_json_schema_errors(tmp_path, changes, fragment, write_json_relation):
    with pytest.raises(PatchscopesError, match="not a relation file") as err:
        load_relation(write_json_relation(tmp_path, **changes))
    assert fragment in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(PatchscopesError, match="no such relation file"):
        load_relation(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PatchscopesError, match="invalid JSON"):
        load_relation(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PatchscopesError, match="no 'samples'"):
        load_relation(tmp_path / "list.json")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(PatchscopesError, match="unknown relation file type"):
        load_relation(tmp_path / "r.txt")
    pd.DataFrame({"subject": ["a"], "object": ["b"]}).to_csv(tmp_path / "t.tsv", sep="\t")
    with pytest.raises(PatchscopesError, match="missing column"):
        load_relation(tmp_path / "t.tsv")


def test_folders_expand_and_duplicates_are_refused(tmp_path, write_json_relation, write_tsv_relation):
    (tmp_path / "a").mkdir()
    write_json_relation(tmp_path / "a")
    write_tsv_relation(tmp_path / "a")
    (tmp_path / "a" / "LICENSE").write_text("MIT")
    files = relation_files([tmp_path / "a", tmp_path / "a" / "country_currency.tsv"])
    assert sorted(p.name for p in files) == ["country_capital_city.json", "country_currency.tsv"]
    assert [r.key for r in load_relations(tmp_path / "a")] == ["country_capital_city", "country_currency"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchscopesError, match=r"no \.json or \.tsv"):
        relation_files(tmp_path / "empty")
    write_tsv_relation(tmp_path, "country_capital_city")
    with pytest.raises(PatchscopesError, match="two files of the relation"):
        load_relations([tmp_path / "a" / "country_capital_city.json", tmp_path / "country_capital_city.tsv"])


def test_windows_attach_to_the_json_relation_of_the_same_key(tmp_path, write_json_relation, write_tsv_relation):
    rel = load_relation(write_json_relation(tmp_path, "country_currency", name="country currency",
                                            samples=[{"subject": "Japan", "object": "Yen"},
                                                     {"subject": "Chile", "object": "Peso"}],
                                            prompt_templates=["The official currency of {} is the"]))
    (tmp_path / "tsv").mkdir()
    write_tsv_relation(tmp_path / "tsv")
    assert attach_windows([rel], tmp_path / "tsv") == 1
    assert list(rel.windows) == ["Japan"]
    contexts = subject_contexts(rel)
    assert [c.kind for c in contexts["Japan"]] == ["wikitext", "wikitext"]
    assert [c.text for c in contexts["Chile"]] == ["The official currency of Chile is the"]  # falls back


# -- the real data, where present --------------------------------------------------------------------------
@pytest.mark.skipif(not (DATA / "relations").is_dir() or not (DATA / "patchscopes_preprocessed").is_dir(),
                    reason="shared relation data not present")
def test_real_relation_files_load(smollm2):
    relations = load_relations(DATA / "relations")
    assert len(relations) == 40 and all(r.samples and r.prompt_templates for r in relations)
    capital = next(r for r in relations if r.key == "country_capital_city")
    assert RelationSample("Brazil", "Brasília") in capital.samples
    for r in relations:  # every relation has a usable target prompt
        check_target_prompt(r.resolved_target_prompt())
    tsvs = load_relations(DATA / "patchscopes_preprocessed")
    assert len(tsvs) == 22
    assert {r.key: r.target_prompt for r in tsvs} == PAPER_TARGET_PROMPTS
    # Every JSON relation of the paper's TSVs is matched to it by key.
    assert {r.key for r in tsvs} <= {r.key for r in relations}
    # Positions recomputed with SmolLM2's tokenizer: the token at the position ends the subject.
    currency = next(r for r in tsvs if r.key == "country_currency")
    samples, dropped = locate_samples(smollm2, currency, subject_contexts(currency, kinds=["wikitext"]))
    assert len(samples) > 100 and dropped <= 10
    for s in samples:
        ids = smollm2.encode(s.text)
        assert smollm2.decode(ids[: s.position + 1]).lower().rstrip().endswith(s.subject.lower())
