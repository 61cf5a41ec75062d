"""Multi-hop correction: chaining relations into two-hop queries, the hop filter, the CoT patchscope, scores,
the figure and the ``eval multihop`` command (tiny random models and synthetic relation files)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.data.relations import FactCheck, load_relations, normalize_text
from patchscopes.data.two_hop import build_queries, describe, hop2_template, split_queries
from patchscopes.engine.generation import greedy_generate
from patchscopes.errors import PatchscopesError
from patchscopes.experiments import multihop as mh
from patchscopes.resolve import resolve_jobs
from patchscopes.runs import RunOptions

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def relation(name, templates, domain, range_, pairs, zs=()):
    """A relation in the evandez/relations schema."""
    return {"name": name, "prompt_templates": list(templates), "prompt_templates_zs": list(zs),
            "properties": {"relation_type": "factual", "domain_name": domain, "range_name": range_,
                           "symmetric": False},
            "samples": [{"subject": s, "object": o} for s, o in pairs]}


PRODUCTS = relation("product by company", ["{} was made by", "{} is a product of"], "product", "company",
                    [("Alpha", "Acme"), ("Beta", "acme"), ("Gamma", "Zeta Corp."), ("Delta", "Nowhere"),
                     ("Ann", "Acme")])
CEOS = relation("company boss", ["{}'s boss is", "The boss of {} is"], "company", "person",
                [("ACME", "Ann"), ("zeta corp", "Zed"), ("Other", "Olga")])
COLORS = relation("fruit color", ["{} have the color"], "fruit", "color", [("apples", "Acme")])


def write(tmp_path, *relations):
    paths = []
    for rel in relations:
        path = tmp_path / (re.sub(r"\W+", "_", rel["name"]) + ".json")
        path.write_text(json.dumps(rel))
        paths.append(path)
    return paths


# -- building queries --------------------------------------------------------------------------------------------
def test_chaining_finds_exactly_the_expected_queries():
    report = build_queries([PRODUCTS, CEOS, COLORS])
    found = {(q.subject, q.bridge, q.answer) for q in report.queries}
    # Acme/ACME/acme and "Zeta Corp."/"zeta corp" match after normalisation; Nowhere has no boss; Ann → Acme →
    # Ann repeats an entity. Two chains have mismatched types: the colour relation's object "Acme" is not a
    # company (its range is "color"), and the boss "Ann" (a person) is not a product.
    assert found == {("Alpha", "Acme", "Ann"), ("Beta", "acme", "Ann"), ("Gamma", "Zeta Corp.", "Zed")}
    assert report.chains == [("product by company", "company boss", 3)]
    assert report.skipped == {"query: repeated entity": 1, "chain: range of hop 1 is not the domain of hop 2": 2}
    q = next(q for q in report.queries if q.subject == "Alpha")
    assert q.hop1_prompt == "Alpha was made by"
    assert q.hop1_prompts == ("Alpha was made by", "Alpha is a product of")
    assert q.hop2_prompt == "The boss of Acme is"  # B's first template that does not open with the subject
    assert q.description == "the company that Alpha was made by"
    assert q.composed_prompt == "The boss of the company that Alpha was made by is"
    assert (q.hop2_prefix, q.hop2_suffix) == ("The boss of", " is")
    assert q.cot_prompt == "Q: The boss of the company that Alpha was made by is what?\nA: Let's think step by step."
    assert q.query_id.startswith("product_by_company>company_boss:")
    assert len({q.query_id for q in report.queries}) == 3
    # The same files give the same ids.
    assert [q.query_id for q in build_queries([PRODUCTS, CEOS, COLORS]).queries] == [
        q.query_id for q in report.queries]


def test_chaining_options_and_loaded_files(tmp_path):
    # Without the type check the colour relation chains too (apples → Acme → Ann); boss → product is skipped
    # as a whole: every template of "product by company" opens with its subject.
    loose = build_queries([PRODUCTS, CEOS, COLORS], match_types=False)
    assert ("apples", "Acme", "Ann") in {(q.subject, q.bridge, q.answer) for q in loose.queries}
    assert len(loose.queries) == 4
    assert loose.skipped == {"query: repeated entity": 1, "chain: every template of hop 2 opens with its subject": 1}
    assert next(q for q in loose.queries if q.subject == "apples").description == "the color that apples have"
    # Own descriptions, a CoT template, a cap per chain.
    own = build_queries([PRODUCTS, CEOS], descriptions={"product_by_company": "the maker of {}"},
                        cot_template="Think. {composed}", max_per_chain=2)
    assert len(own.queries) == 2 and own.skipped["query: over --max-per-chain"] == 1
    assert own.queries[0].composed_prompt.startswith("The boss of the maker of ")
    assert own.queries[0].cot_prompt.startswith("Think. The boss of the maker of ")
    # Relations loaded from files (the relations module's loader) chain the same way.
    loaded = build_queries(load_relations(write(tmp_path, PRODUCTS, CEOS, COLORS)))
    assert {(q.subject, q.answer) for q in loaded.queries} == {("Alpha", "Ann"), ("Beta", "Ann"), ("Gamma", "Zed")}
    with pytest.raises(PatchscopesError, match="composed"):
        build_queries([PRODUCTS, CEOS], cot_template="no placeholder")
    with pytest.raises(PatchscopesError, match="share the name"):
        build_queries([PRODUCTS, PRODUCTS])


def test_verbalisation_rules():
    assert describe("{} was created by", "Visual Basic", "company") == "the company that Visual Basic was created by"
    assert describe("{} is from the country of", "Pizza", "country") == "the country that Pizza is from"
    assert describe("{} evolves into a", "Pichu", "pokemon") == "the pokemon that Pichu evolves into"
    assert describe("The capital city of {} is", "France", "city") == "the capital city of France"
    assert describe("The official currency of {} is the", "Japan", "currency") == "the official currency of Japan"
    assert describe("{}'s father is named", "Chet Hanks", "person") == "Chet Hanks's father"
    assert describe("On the inside, {} are", "kiwis", "color") is None
    assert hop2_template(["{}'s CEO is", "The CEO of {} is"]) == "The CEO of {} is"
    assert hop2_template(["{}'s father is named"]) == "The father of {} is named"
    assert hop2_template(["{} speaks"], ["What language does {} speak? They speak"]).startswith("What language")
    assert hop2_template(["{} was born in"]) is None


def test_split_never_overlaps_and_is_seeded():
    first = build_queries([PRODUCTS, CEOS]).queries[0]
    many = [replace(first, query_id=f"q{i}") for i in range(23)]
    for n in (2, 3, 7, 23):
        for seed in (0, 1):
            dev, test = split_queries(many[:n], 0.5, seed=seed)
            ids_dev, ids_test = {q.query_id for q in dev}, {q.query_id for q in test}
            assert not ids_dev & ids_test
            assert ids_dev | ids_test == {q.query_id for q in many[:n]}
            assert dev and test
            assert split_queries(many[:n], 0.5, seed=seed) == (dev, test)
    assert split_queries(many, 0.5, seed=0) != split_queries(many, 0.5, seed=1)
    with pytest.raises(PatchscopesError, match="between 0 and 1"):
        split_queries(many, 1.0)


# -- the hop filter --------------------------------------------------------------------------------------------
def test_filter_counts_each_step(monkeypatch, tiny_llama):
    queries = build_queries([PRODUCTS, CEOS]).queries  # Alpha, Beta (→ Acme → Ann), Gamma (→ Zeta Corp. → Zed)
    known = {"Alpha is a product of", "Beta was made by", "Gamma was made by", "The boss of Acme is",
             "The boss of acme is"}  # hop 2 is filled with o1 as hop 1's relation spells it

    def fake(model, prompts, objects, **kwargs):
        return [FactCheck(p, o, f"... {o}" if p in known else "...", p in known) for p, o in zip(prompts, objects)]

    monkeypatch.setattr(mh, "knows_fact", fake)
    kept, counts, hops = mh.filter_known(tiny_llama, queries)
    assert counts == {"queries": 3, "hop1_known": 3, "both_known": 2}
    assert [(q.subject, q.hop1_prompt) for q in kept] == [("Alpha", "Alpha is a product of"),
                                                          ("Beta", "Beta was made by")]
    assert len(hops) == 6 and hops["correct"].sum() == 5
    # The whole pipeline reports the same counts (and nothing else runs for the queries dropped).
    frame = mh.multihop_samples(tiny_llama, [PRODUCTS, CEOS], source_layers="0,2", target_layers="1", seed=0)
    assert frame.attrs["counts"] == {"relations": 2, "chains": 1, "queries": 3, "hop1_known": 3, "both_known": 2,
                                     "used": 2, "dev": 1, "test": 1, "control": 0}
    assert set(frame["query_id"]) == {q.query_id for q in kept}
    assert len(frame) == 2 * (2 + 2 * 1)


def test_filter_with_the_real_check(tiny_llama):
    facts = own_facts(tiny_llama)
    frame = mh.multihop_samples(tiny_llama, facts, source_layers="1", target_layers="1", max_queries=2)
    counts = frame.attrs["counts"]
    assert counts["queries"] == counts["hop1_known"] == counts["both_known"] >= 3
    assert counts["used"] == 2 and frame["query_id"].nunique() == 2


# -- the CoT patchscope --------------------------------------------------------------------------------------------
def test_scope_positions_in_both_directions(tiny_llama):
    q = build_queries([PRODUCTS, CEOS]).queries[0]
    forward = mh.multihop_scope(q, 1, 2, "hop1-into-hop2")
    backward = mh.multihop_scope(q, 0, 1, "hop2-into-hop1")
    assert forward.source.prompt == q.hop1_prompt and forward.target.prompt == q.composed_prompt
    assert backward.source.prompt == "The boss of" and backward.target.prompt == q.description + " is"
    jobs = resolve_jobs([forward, backward], tiny_llama)
    # Byte tokens after <bos>: i* is the last character of the description ("...made by").
    assert jobs[0].patch.position == len(q.composed_prompt) - len(" is")
    assert jobs[1].patch.position == len(q.description)
    assert jobs[0].source.position == len(q.hop1_prompt) and jobs[1].source.position == len("The boss of")
    assert (jobs[0].source.layer, jobs[0].patch.layer) == (1, 2)
    with pytest.raises(PatchscopesError, match="direction"):
        mh.multihop_scope(q, 0, 0, "sideways")


@pytest.mark.parametrize("direction", mh.DIRECTIONS)
def test_batched_equals_reference(tiny_llama, direction):
    queries = build_queries([PRODUCTS, CEOS]).queries[::2]  # Alpha → Acme → Ann, Gamma → Zeta Corp. → Zed
    options = dict(queries=queries, hop_filter=False, direction=direction, source_layers="0,2", target_layers="1,2",
                   max_new_tokens=6, cot_tokens=4, control=True)
    batched = mh.multihop_samples(tiny_llama, options=RunOptions(engine="batched"), **options)
    reference = mh.multihop_samples(tiny_llama, options=RunOptions(engine="reference"), **options)
    n_control = batched.attrs["counts"]["control"]
    assert n_control == (2 if direction == "hop1-into-hop2" else 0)  # both queries share "The boss of"
    assert len(batched) == 2 * (2 + 4) + n_control * 4
    pd.testing.assert_frame_equal(batched, reference)
    # Each patched row is the engine's own result for that patchscope.
    row = batched[batched["method"] == "patchscope"].iloc[-1]
    q = next(q for q in queries if q.query_id == row["query_id"])
    scope = mh.multihop_scope(q, int(row["source_layer"]), int(row["target_layer"]), direction, 6)
    assert ps.run(scope, tiny_llama, engine="reference")[0].generated_text == row["generated_text"]


def test_control_donors():
    queries = build_queries([PRODUCTS, CEOS]).queries  # Alpha → Acme → Ann, Beta → acme → Ann, Gamma → Zed
    by = {q.subject: q for q in queries}
    donors = mh.control_donors(queries, "hop1-into-hop2")
    # Alpha and Beta share their bridge and answer: each takes Gamma's source, and Gamma the next one, Alpha's.
    assert [d.subject for d in donors] == ["Gamma", "Gamma", "Alpha"]
    scope = mh.multihop_scope(by["Alpha"], 1, 2, "hop1-into-hop2", donor=by["Gamma"])
    assert scope.source.prompt == by["Gamma"].hop1_prompt and scope.target.prompt == by["Alpha"].composed_prompt
    # hop 2's prefix is the same for all: no donor in the other direction; one query alone has none.
    assert mh.control_donors(queries, "hop2-into-hop1") == [None] * 3
    assert mh.control_donors(queries[:1], "hop1-into-hop2") == [None]


# -- scores ------------------------------------------------------------------------------------------------------
def synthetic_samples(table: dict[str, tuple[str, list[tuple[int, int]]]], control: bool = False) -> pd.DataFrame:
    """Sample rows: per query its split and the (l, l*) pairs that succeed, on a 3 × 2 grid (the control, if
    asked for, succeeds at (0, 0) only)."""
    rows = []
    for qid, (split, good) in table.items():
        rows.append((qid, "vanilla", split, None, None, False, "", "o2", "A", "B"))
        rows.append((qid, "cot", split, None, None, qid == "t1", "", "o2", "A", "B"))
        for sl in (0, 1, 2):
            for tl in (0, 1):
                rows.append((qid, "patchscope", split, sl, tl, (sl, tl) in good, "", "o2", "A", "B"))
                if control:
                    rows.append((qid, "control", split, sl, tl, (sl, tl) == (0, 0), "", "o2", "A", "B"))
    frame = pd.DataFrame(rows, columns=mh.RECORD_COLUMNS)
    frame["source_layer"] = frame["source_layer"].astype("Int64")
    frame["target_layer"] = frame["target_layer"].astype("Int64")
    return frame


def test_oracle_and_held_out_scores():
    samples = synthetic_samples({
        "d1": ("dev", [(1, 1), (2, 0)]), "d2": ("dev", [(1, 1)]), "d3": ("dev", [(0, 0)]),
        "t1": ("test", [(1, 1)]), "t2": ("test", [(2, 1)]), "t3": ("test", []),
    })
    assert mh.choose_pair(samples) == (1, 1)
    summary = mh.summarize_multihop(samples).set_index("method")
    assert summary.loc["patchscope-oracle", "correct"] == 5 and summary.loc["patchscope-oracle", "n"] == 6
    assert summary.loc["patchscope-oracle", "test_correct"] == 2
    assert summary.loc["patchscope-heldout", "test_correct"] == 1 and summary.loc["patchscope-heldout", "test_n"] == 3
    assert summary.loc["patchscope-heldout", "source_layer"] == 1
    assert summary.loc["cot", "test_correct"] == 1 and summary.loc["vanilla", "correct"] == 0
    assert (summary.loc["patchscope-oracle", "test_accuracy"] >= summary.loc["patchscope-heldout", "test_accuracy"])
    records = mh.result_records(samples, mh.summarize_multihop(samples))
    held = [r for r in records if r["method"] == "patchscope-heldout"]
    assert {r["query_id"] for r in held} == {"t1", "t2", "t3"} and sum(r["correct"] for r in held) == 1
    oracle = {r["query_id"]: r for r in records if r["method"] == "patchscope-oracle"}
    assert oracle["d1"]["correct"] and (oracle["d1"]["source_layer"], oracle["d1"]["target_layer"]) == (1, 1)
    assert not oracle["t3"]["correct"] and oracle["t3"]["source_layer"] is None
    # The control is scored the same way, at the pair chosen for the patchscope.
    with_control = synthetic_samples({"d1": ("dev", [(1, 1)]), "t1": ("test", [(1, 1)]), "t2": ("test", [])},
                                     control=True)
    summary = mh.summarize_multihop(with_control)
    assert summary.attrs["oracle_fixes"] == [2, 3] and summary.attrs["control_fixes"] == [3, 3]
    summary = summary.set_index("method")
    assert summary.loc["control-oracle", "correct"] == 3 and summary.loc["control-heldout", "test_correct"] == 0
    assert summary.loc["patchscope-heldout", "test_correct"] == 1
    records = mh.result_records(with_control, mh.summarize_multihop(with_control))
    assert {r["method"] for r in records} >= {"control-oracle", "control-heldout"}
    # Ties go to the pair whose neighbourhood is best on dev.
    tied = synthetic_samples({"d1": ("dev", [(0, 0), (2, 1), (2, 0), (1, 1)]), "d2": ("dev", [(0, 0), (2, 1)]),
                              "t1": ("test", [])})
    assert mh.choose_pair(tied) == (2, 1)


def test_oracle_never_below_held_out_on_random_tables():
    import random

    rng = random.Random(0)
    for _ in range(30):
        table = {f"q{i}": ("dev" if i % 2 else "test",
                           [(sl, tl) for sl in (0, 1, 2) for tl in (0, 1) if rng.random() < 0.3]) for i in range(8)}
        summary = mh.summarize_multihop(synthetic_samples(table)).set_index("method")
        assert summary.loc["patchscope-oracle", "test_correct"] >= summary.loc["patchscope-heldout", "test_correct"]


def test_figure_marks_the_chosen_pair():
    samples = synthetic_samples({"d1": ("dev", [(1, 1)]), "t1": ("test", [(1, 1), (0, 0)])})
    samples.attrs.update(model="m", direction="hop1-into-hop2")
    fig = mh.multihop_figure(samples, mh.summarize_multihop(samples))
    heat = fig.data[0]
    assert list(heat.x) == ["0", "1", "2"] and list(heat.y) == ["0", "1"]
    assert heat.z[1][1] == 1.0 and heat.z[0][0] == 0.5
    assert fig.data[1].x == ("1",) and fig.data[1].y == ("1",)
    with pytest.raises(PatchscopesError, match="no patchscope results"):
        mh.multihop_figure(samples[samples["method"] != "patchscope"])
    both = synthetic_samples({"d1": ("dev", [(1, 1)]), "t1": ("test", [])}, control=True)
    fig = mh.multihop_figure(both, mh.summarize_multihop(both))
    heats = [trace for trace in fig.data if trace.type == "heatmap"]
    assert [h.name for h in heats] == ["CoT patchscope", "control: another query's source"]
    assert heats[1].z[0][0] == 1.0 and heats[1].z[1][1] == 0.0


# -- the command -------------------------------------------------------------------------------------------------
def own_facts(lm, n_subjects: int = 8):
    """Two relation files whose facts are what ``lm`` says: o1 is a word of its greedy continuation of hop 1, o2
    one of hop 2, so that the hop filter keeps every query on this model (and on a copy loaded from disk)."""
    subjects = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta"][:n_subjects]
    hop1 = greedy_generate(lm, [f"{s} was made by" for s in subjects], 20)
    firsts = []
    for s, text in zip(subjects, hop1):
        words = [w for w in re.findall(r"\w+", normalize_text(text)) if w.isalnum() and w != normalize_text(s)]
        if words:
            firsts.append((s, words[0]))
    bridges = sorted({o1 for _, o1 in firsts})
    hop2 = greedy_generate(lm, [f"The boss of {o1} is" for o1 in bridges], 20)
    seconds = {}
    for o1, text in zip(bridges, hop2):
        words = [w for w in re.findall(r"\w+", normalize_text(text)) if w.isalnum() and w != o1]
        if words:
            seconds[o1] = words[0]
    pairs = [(s, o1) for s, o1 in firsts if o1 in seconds and seconds[o1] != normalize_text(s)]
    assert len(pairs) >= 3, "the tiny model should name enough words"
    return [relation("thing maker", ["{} was made by"], "thing", "maker", pairs),
            relation("maker boss", ["The boss of {} is"], "maker", "person", sorted(seconds.items()))]


def invoke(*args, env=None):
    return runner.invoke(app, list(args), env={**ENV, **(env or {})})


def test_command_writes_table_json_and_plot(tiny_dir, tiny_llama, tmp_path):
    files = write(tmp_path, *own_facts(tiny_llama))
    out_json, plot = tmp_path / "out" / "mh.json", tmp_path / "out" / "mh.html"
    result = invoke("eval", "multihop", "--model", tiny_dir, "--relations", str(files[0]), str(files[1]),
                    "-l", "0,2", "-t", "1,2", "--max-queries", "4", "--cot-tokens", "5", "--json", str(out_json),
                    "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "both hops answered (kept)" in result.output and "held-out" in result.output
    assert "19.57 (9/46)" in result.output  # the paper's figure next to ours
    records = json.loads(out_json.read_text())
    assert {"query_id", "method", "source_layer", "target_layer", "correct"} <= set(records[0])
    methods = {r["method"] for r in records}
    assert {"vanilla", "cot", "patchscope", "patchscope-oracle", "patchscope-heldout", "control", "control-oracle",
            "control-heldout"} == methods
    patch = [r for r in records if r["method"] == "patchscope"]
    assert len(patch) == 4 * 4 and {(r["source_layer"], r["target_layer"]) for r in patch} == {
        (0, 1), (0, 2), (2, 1), (2, 2)}
    assert len({r["query_id"] for r in records}) == 4
    assert all(r["model"] == tiny_dir and r["direction"] == "hop1-into-hop2" for r in records)
    html = plot.read_text()
    assert "<html>" in html[:100] and "plotly" in html and len(html) > 1_000_000  # plotly.js embedded


def test_command_data_dir_default_and_other_direction(tiny_dir, tiny_llama, tmp_path):
    (tmp_path / "relations").mkdir()
    write(tmp_path / "relations", *own_facts(tiny_llama, 4))
    result = invoke("eval", "multihop", "--model", tiny_dir, "--direction", "hop2-into-hop1", "-l", "1", "-t", "1",
                    "--no-hop-filter", "--cot-tokens", "3", "--max-new-tokens", "3",
                    env={"PATCHSCOPES_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "hop2-into-hop1" in result.output


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


def test_command_bad_inputs(tiny_dir, tmp_path):
    files = [str(p) for p in write(tmp_path, PRODUCTS, CEOS)]
    base = ["eval", "multihop", "--model", tiny_dir]
    assert_clean_error(invoke(*base, "--relations", str(tmp_path / "missing.json")), "no such relation file")
    assert_clean_error(invoke(*base, "--relations", *files, "--direction", "sideways"), "unknown --direction")
    assert_clean_error(invoke(*base, "--relations", *files, "--json", "out.txt"), "must end in .json")
    assert_clean_error(invoke(*base, "--relations", *files, "--plot", "out.txt"), "must end in .html")
    assert_clean_error(invoke(*base, "--relations", *files, "--dev-fraction", "0"), "--dev-fraction")
    assert_clean_error(invoke(*base, "--relations", *files, "--cot-template", "think"), "has no {composed}")
    assert_clean_error(invoke(*base, "--relations", *files, "-l", "7"), "out of range")
    assert_clean_error(invoke(*base, "--relations", files[0]), "no two-hop query")
    assert_clean_error(invoke(*base, env={"PATCHSCOPES_DATA_DIR": ""}), "no relation files given")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    assert_clean_error(invoke(*base, "--relations", str(bad)), "not a relation file")
