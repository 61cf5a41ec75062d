"""Relation data: loaders (JSON schema, the paper's TSVs), target prompts, object matching, subject positions,
source contexts, batched greedy generation and the knows-the-fact check."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from patchscopes.data.relations import (
    PAPER_TARGET_PROMPTS,
    Relation,
    RelationSample,
    SourceContext,
    attach_windows,
    check_target_prompt,
    corpus_windows,
    derive_target_prompt,
    load_relation,
    load_relations,
    locate_samples,
    locate_subject,
    mentions,
    normalize_text,
    relation_files,
    subject_contexts,
    unescape,
    verbalize,
)
from patchscopes.engine.generation import greedy_generate
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.knows_fact import knows_fact

DATA = Path(os.environ.get("PATCHSCOPES_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

TSV_COLUMNS = ["sample_id", "prompt_target", "position_target", "target_baseline", "object", "subject",
               "generations_baseline", "generations_baseline_str", "is_correct_baseline", "prompt_source",
               "position_source", "source_cropped_toks"]


def write_json_relation(folder: Path, stem: str = "country_capital_city", **changes) -> Path:
    data = {
        "name": "country capital city",
        "prompt_templates": ["The capital city of {} is", "The capital of {} is"],
        "prompt_templates_zs": ["What is the capital of {}? It is the city of"],
        "properties": {"relation_type": "factual", "domain_name": "country", "range_name": "city",
                       "symmetric": False},
        "samples": [{"subject": "France", "object": "Paris"}, {"subject": "Brazil", "object": "Bras\\u00edlia"},
                    {"subject": "Japan", "object": ["Tokyo", "Tokio"]}, {"subject": "France", "object": "Paris"}],
    }
    data.update(changes)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


def write_tsv_relation(folder: Path, stem: str = "country_currency", rows: list[dict] | None = None) -> Path:
    prompt = "The official currency of x"
    rows = rows or [
        # Two windows of one subject, one with the subject twice (the cropped tokens say which one is meant).
        {"subject": "Japan", "object": "Yen", "prompt_source": " Japan and Japan again today",
         "source_cropped_toks": "[' Japan', ' and', ' Japan']"},
        {"subject": "Japan", "object": "Yen", "prompt_source": " trade with Japan grew",
         "source_cropped_toks": "[' trade', ' with', ' Japan']"},
        {"subject": "Peru", "object": "Sol", "prompt_source": None, "source_cropped_toks": None},
    ]
    records = []
    for k, row in enumerate(rows):
        records.append({"sample_id": k, "prompt_target": prompt, "position_target": -1,
                        "target_baseline": prompt.replace("x", row["subject"]), "object": row["object"],
                        "subject": row["subject"], "generations_baseline": "[]", "generations_baseline_str": "",
                        "is_correct_baseline": True, "prompt_source": row["prompt_source"], "position_source": 3,
                        "source_cropped_toks": row["source_cropped_toks"]})
    path = folder / f"{stem}.tsv"
    pd.DataFrame(records, columns=TSV_COLUMNS).to_csv(path, sep="\t")
    return path


# -- loaders -----------------------------------------------------------------------------------------------
def test_json_relation_in_the_relations_schema(tmp_path):
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


def test_json_relation_of_another_name_derives_its_target_prompt(tmp_path):
    path = write_json_relation(tmp_path, "river_country", name="river country",
                               prompt_templates=["{} flows through", "The river {} is in"])
    rel = load_relation(path)
    assert rel.key == "river_country" and rel.target_prompt is None
    assert rel.resolved_target_prompt() == "x flows through"
    assert rel.verbalize("The Nile") == "The Nile flows through"


def test_json_names_map_to_the_paper_keys(tmp_path):
    path = write_json_relation(tmp_path, "phase", name="substance phase of matter",
                               prompt_templates=["{}'s phase of matter at room temperature is a"])
    rel = load_relation(path)
    assert rel.key == "substance_phase"
    assert rel.resolved_target_prompt() == PAPER_TARGET_PROMPTS["substance_phase"]


def test_tsv_relation_keeps_windows_and_the_meant_occurrence(tmp_path):
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
def test_json_schema_errors(tmp_path, changes, fragment):
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


def test_folders_expand_and_duplicates_are_refused(tmp_path):
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


def test_windows_attach_to_the_json_relation_of_the_same_key(tmp_path):
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


# -- target prompts and matching ---------------------------------------------------------------------------
def test_target_prompt_helpers():
    assert derive_target_prompt(["{} and {} are", "The capital of {}"]) == "The capital of x"
    assert derive_target_prompt(["x marks {}", "{} is at"]) == "x is at"  # the word x would be ambiguous
    with pytest.raises(PatchscopesError, match="cannot derive"):
        derive_target_prompt(["no subject here"])
    assert verbalize("Among x, y and x", "Z") == "Among x, y and Z"
    assert check_target_prompt("The color of x") == "The color of x"
    with pytest.raises(PatchscopesError, match="no placeholder"):
        check_target_prompt("The color of xylophones")
    with pytest.raises(PatchscopesError, match="2 whole-word placeholder"):
        check_target_prompt("x or x")


def test_object_match_normalisation():
    assert normalize_text("  Bogotá,\n D.C.  ") == "bogota d c"
    assert unescape("Bogot\\u00e1") == "Bogotá"
    assert mentions(" is the US DOLLAR.", "Dollar")            # case
    assert mentions(" is the US dollars", "Dollar")            # plural
    assert mentions("in  Mexico\nCity", "Mexico City")         # whitespace runs
    assert mentions("Bogota, the capital", "Bogotá")           # accents
    assert mentions("the Polish zloty", "złoty")               # letters with strokes
    assert mentions("Søren Kierkegaard", "Soren Kierkegaard")
    assert normalize_text("Æsop, Œuvre, Þór, İstanbul") == "aesop oeuvre thor istanbul"
    assert mentions("Washington, D.C. is", "Washington D.C.")  # punctuation
    assert mentions("a well-known x", "well known")            # hyphens as spaces
    assert mentions("McDonalds", "McDonald's")                 # apostrophes dropped
    assert not mentions("one hundred", "red")                  # whole words only
    assert not mentions("reddish", "red")
    assert not mentions("", "red") and not mentions(None, "red")
    assert mentions("the Tokio metro", "Tokyo", aliases=["Tokio"])
    assert not mentions("anything", "", aliases=[""])


# -- positions and contexts --------------------------------------------------------------------------------
def test_subject_position_is_its_last_token(smollm2, tiny_llama):
    for lm in (smollm2, tiny_llama):
        text = " released in the United States on May 2, 2003."
        ids, position = locate_subject(lm, text, "United States")
        assert ids == lm.encode(text)
        upto = lm.decode(ids[: position + 1])
        assert upto.rstrip().endswith("United States")
        assert not lm.decode(ids[:position]).rstrip().endswith("United States")
    # The occurrence meant (the one ending nearest the hint), case-insensitive fallback, absence.
    text = "Japan and Japan again"
    _, first = locate_subject(smollm2, text, "Japan")
    ids, second = locate_subject(smollm2, text, "Japan", subject_end=len("Japan and Japan"))
    assert first < second and smollm2.token_strings([ids[second]])[0] == " Japan"
    assert locate_subject(smollm2, "the JAPAN trade", "Japan") is not None
    assert locate_subject(smollm2, "no such country", "Japan") is None


def test_samples_are_located_per_context(tiny_llama):
    rel = Relation("r", "r", [RelationSample("Oslo", "Norway"), RelationSample("Rome", "Italy")],
                   prompt_templates=["{} is in", "The city of {}"])
    contexts = subject_contexts(rel)
    contexts["Rome"] = [SourceContext("Rome, Rome and more", "corpus", 10), SourceContext("Paris", "corpus")]
    samples, dropped = locate_samples(tiny_llama, rel, contexts)
    assert dropped == 1  # "Paris" has no Rome
    assert [(s.subject, s.text, s.kind) for s in samples] == [
        ("Oslo", "Oslo is in", "template"), ("Oslo", "The city of Oslo", "template"),
        ("Rome", "Rome, Rome and more", "corpus")]
    for s in samples:  # byte tokens after <bos>: the token at the position is the subject's last character
        assert s.token == s.subject[-1]
    assert samples[2].position == 1 + len("Rome, Rome") - 1


def test_corpus_windows_contain_the_subject(smollm2):
    docs = ["Long ago the kings of France built many castles along the rivers of the country, and the people of "
            "France still visit them every summer with their families.", "Nothing here.", "Francesca sang."]
    found = corpus_windows(smollm2, docs, ["France", "Spain"], per_subject=5, window_tokens=12)
    assert list(found) == ["France"]  # Spain never occurs; "Francesca" is not a whole-word match
    assert len(found["France"]) == 2
    for window in found["France"]:
        assert window.kind == "corpus"
        assert window.text[: window.subject_end].endswith("France")
        assert len(smollm2.tokenizer(window.text, add_special_tokens=False)["input_ids"]) <= 13
    assert len(corpus_windows(smollm2, docs, ["France"], per_subject=1)["France"]) == 1


def test_context_preference_and_limits(tmp_path):
    rel = load_relation(write_tsv_relation(tmp_path))
    corpus = {"Peru": [SourceContext("trade with Peru", "corpus", 15)],
              "Japan": [SourceContext("Japan corpus", "corpus", 5)]}
    got = subject_contexts(rel, corpus=corpus, per_subject=1)
    assert [c.kind for c in got["Japan"]] == ["wikitext"] and [c.kind for c in got["Peru"]] == ["corpus"]
    got = subject_contexts(rel, corpus=corpus, kinds=["corpus", "wikitext"])
    assert got["Japan"][0].text == "Japan corpus"
    got = subject_contexts(rel, kinds=["template"])
    assert got["Peru"][0].text == "The official currency of Peru"  # a TSV has no templates: its verbalization
    assert "Peru" not in subject_contexts(rel, kinds=["wikitext"])
    with pytest.raises(PatchscopesError, match="unknown context kind"):
        subject_contexts(rel, kinds=["web"])


# -- generation and the fact check -------------------------------------------------------------------------
def test_greedy_generate_batched_equals_one_by_one_and_hf(tiny_llama):
    lm = tiny_llama
    prompts = ["Hi", "Hello there you", "abc", (1, 70, 71)]
    batched = greedy_generate(lm, prompts, 6, batch_size=4)
    assert batched == [greedy_generate(lm, [p], 6)[0] for p in prompts]
    for prompt, text in zip(prompts[:3], batched):
        ids = torch.tensor([lm.encode(prompt)])
        out = lm.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
        assert text == lm.decode(out[0, ids.shape[1]:])
    with pytest.raises(PatchscopesError, match="empty prompt"):
        greedy_generate(lm, [()], 3)
    with pytest.raises(PatchscopesError, match="max_new_tokens"):
        greedy_generate(lm, ["a"], 0)


def test_knows_fact_on_smollm2(smollm2):
    checks = knows_fact(smollm2, ["The capital city of France", "The capital city of France"], ["Paris", "Tokyo"],
                        max_new_tokens=8)
    assert [c.known for c in checks] == [True, False]
    assert "Paris" in checks[0].generated_text and checks[1].prompt == "The capital city of France"
    with pytest.raises(PatchscopesError, match="2 prompts but 1 objects"):
        knows_fact(smollm2, ["a", "b"], ["c"])


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
