"""Experiment 4 (cross-model patching): aligned positions, map fitting and files, the evaluation and the commands."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.data.entities import Entity
from patchscopes.data.text import Document
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.cross_model import (
    CROSS_METHODS,
    cross_model_descriptions,
    cross_model_figure,
    cross_model_samples,
    summarize_cross_descriptions,
    summarize_cross_model,
    text_surprisal,
)
from patchscopes.lenses.cross_model import (
    FORMAT,
    CrossModelMap,
    align_windows,
    aligned_positions,
    fit_cross_model_map,
    map_summary,
    prefix_ends,
    r_squared,
    text_windows,
)

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TEXTS = [f"Paragraph {i}: the cat sat on the mat, and the naïve cat looked at {i * 7} birds in the tree."
         for i in range(60)]
MERGES = [("t", "h"), ("th", "e"), ("c", "a"), ("ca", "t"), ("Ġ", "m"), ("Ġm", "a")]


def bpe_tokenizer():
    """A byte-level BPE tokenizer with a few merges ("the", "cat", " ma") and no <bos>: unlike the byte tokenizer
    of the tiny models, so the two tokenize the same text differently."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def bpe_wide() -> ps.LanguageModel:
    """A tiny Llama of width 48 reading with the BPE tokenizer: another tokenizer and another width."""
    from transformers import AutoModelForCausalLM

    from patchscopes.testing import sharpen, tiny_config

    tokenizer = bpe_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.hidden_size = 48
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, 1, 0
    torch.manual_seed(2)
    model = sharpen(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    return ps.LanguageModel(model, tokenizer, name="tiny-llama-bpe-48")


@pytest.fixture(scope="module")
def cmap(tiny_llama, bpe_wide) -> CrossModelMap:
    return fit_cross_model_map(tiny_llama, bpe_wide, TEXTS[:40], layers="0,2", target_layers="1,2", samples=400)


# -- aligned positions -------------------------------------------------------------------------------------------
def test_aligned_positions_on_a_known_string(tiny_llama, bpe_wide):
    text = "the cat sat"
    # Byte tokenizer: <bos> t h e ␣ c a t ␣ s a t (index = character + 1).
    # BPE: the|Ġ|cat|Ġ|s|a|t, ending at characters 3, 4, 7, 8, 9, 10, 11.
    assert bpe_wide.token_strings(bpe_wide.encode(text)) == ["the", " ", "cat", " ", "s", "a", "t"]
    assert prefix_ends(bpe_wide, text) == {3: 0, 4: 1, 7: 2, 8: 3, 9: 4, 10: 5, 11: 6}
    assert prefix_ends(tiny_llama, text) == {end: end for end in range(1, 12)}
    assert aligned_positions(tiny_llama, bpe_wide, text) == [(4, 1), (7, 2), (8, 3), (9, 4), (10, 5), (11, 6)]
    assert aligned_positions(tiny_llama, bpe_wide, text, skip_first=False)[0] == (3, 0)
    # Reversed roles: the same pairs, swapped.
    assert aligned_positions(bpe_wide, tiny_llama, text) == [(1, 4), (2, 7), (3, 8), (4, 9), (5, 10), (6, 11)]


def test_aligned_positions_decode_to_the_same_prefix(tiny_llama, bpe_wide):
    text = "the mat, naïve cat"
    a_ids, b_ids = tiny_llama.encode(text), bpe_wide.encode(text)
    pairs = aligned_positions(tiny_llama, bpe_wide, text)
    assert pairs
    for i, j in pairs:
        prefix = tiny_llama.decode(a_ids[: i + 1])
        assert prefix == bpe_wide.decode(b_ids[: j + 1]) and text.startswith(prefix)
    # No pair ends inside "ï" (two bytes): after its first byte neither prefix is text.
    ends = [len(tiny_llama.decode(a_ids[: i + 1])) for i, _ in pairs]
    assert text.index("ï") + 1 in ends and all("\ufffd" not in tiny_llama.decode(a_ids[: i + 1]) for i, _ in pairs)
    assert len(ends) == len(set(ends))


def test_text_windows_and_aligned_windows(tiny_llama, bpe_wide):
    docs = [Document("the cat sat on the mat " * 6), Document("a b")]
    windows = text_windows(tiny_llama, docs, max_tokens=20)
    assert [d for d, _ in windows] == [0] * 7 + [1]
    assert all(len(tiny_llama.encode(t)) <= 21 for _, t in windows)  # 20 text tokens + <bos>
    assert all(t in docs[d].text for d, t in windows)
    aligned = align_windows(tiny_llama, bpe_wide, docs, max_tokens=20)
    assert aligned and all(w.pairs for w in aligned)
    assert aligned[0].source_ids == tuple(tiny_llama.encode(aligned[0].text))
    with pytest.raises(PatchscopesError, match="at least 2"):
        text_windows(tiny_llama, docs, max_tokens=1)


# -- fitting -----------------------------------------------------------------------------------------------------
def test_fit_recovers_the_identity_between_a_model_and_itself(tiny_llama):
    fitted = fit_cross_model_map(tiny_llama, tiny_llama, TEXTS[:20], layers="1", target_layers="1,2", samples=600)
    same = fitted.mapping(1, 1)
    assert torch.allclose(same.weight, torch.eye(32), atol=1e-3)
    assert torch.allclose(same.bias, torch.zeros(32), atol=1e-3)
    assert fitted.config["r2"]["1->1"] == pytest.approx(1.0, abs=1e-5)
    assert fitted.config["r2"]["1->2"] < 1.0
    assert fitted.config["data"]["samples"] == 600
    assert fitted.config["data"]["aligned_share"] > 0.9  # the same tokenizer: every position but the first


def test_fit_recovers_a_known_affine_relation():
    torch.manual_seed(0)
    x = torch.randn(500, 6)
    weight, bias = torch.randn(4, 6), torch.randn(4)
    y = x @ weight.T + bias
    affine = ps.fit_affine(x, y)
    assert torch.allclose(affine.weight, weight, atol=1e-4) and torch.allclose(affine.bias, bias, atol=1e-4)
    assert r_squared(affine, x, y) == pytest.approx(1.0, abs=1e-6)
    assert r_squared(ps.Affine(torch.zeros(4, 6), y.mean(0)), x, y) == pytest.approx(0.0, abs=1e-6)


def test_fit_between_tokenizers_and_widths(cmap, tiny_llama, bpe_wide):
    assert cmap.pairs == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert cmap.mapping(2, 1).weight.shape == (48, 32)
    assert cmap.layers == [0, 2] and cmap.target_layers == [1, 2]
    assert cmap.config["source"]["name"] == "tiny-llama" and cmap.config["target"]["hidden_size"] == 48
    assert 0.3 < cmap.config["data"]["aligned_share"] < 1.0
    assert cmap.config["data"]["samples"] == 400 and len(cmap.fit_documents) == cmap.config["data"]["documents"]
    assert "tiny-llama → tiny-llama-bpe-48: 4 pairs" in map_summary(cmap)
    with pytest.raises(PatchscopesError, match="no map from layer 1 to layer 1"):
        cmap.mapping(1, 1)
    with pytest.raises(PatchscopesError, match="out of range"):
        fit_cross_model_map(tiny_llama, bpe_wide, TEXTS[:2], layers="5", target_layers="0")
    with pytest.raises(PatchscopesError, match="no position"):
        fit_cross_model_map(tiny_llama, bpe_wide, ["a"], layers="0", target_layers="0")


def test_save_and_load_round_trip(cmap, tiny_llama, bpe_wide, tmp_gpt2, tmp_path):
    from safetensors import safe_open

    path = cmap.save(tmp_path / "maps" / "a-to-b.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == FORMAT and meta["source_model"] == "tiny-llama"
    assert meta["target_model"] == "tiny-llama-bpe-48"
    assert json.loads(meta["layers"]) == [0, 2] and json.loads(meta["target_layers"]) == [1, 2]
    assert meta["source_hidden_size"] == "32" and meta["target_hidden_size"] == "48"
    assert meta["data_fingerprint"] == cmap.config["data"]["fingerprint"] and meta["samples"] == "400"
    loaded = CrossModelMap.load(path, source=tiny_llama, target=bpe_wide)
    assert loaded.pairs == cmap.pairs and loaded.config == json.loads(json.dumps(cmap.config))
    for pair in cmap.pairs:
        assert torch.equal(loaded.mapping(*pair).weight, cmap.mapping(*pair).weight)
        assert torch.equal(loaded.mapping(*pair).bias, cmap.mapping(*pair).bias)
    assert torch.equal(loaded.fit_documents, cmap.fit_documents)
    assert loaded.mapping(2, 1).name == "cross-model-affine[2->1]"
    with pytest.raises(PatchscopesError, match="source was fitted on another model"):
        CrossModelMap.load(path, source=tmp_gpt2)
    with pytest.raises(PatchscopesError, match="target was fitted on another model"):
        CrossModelMap.load(path, target=tiny_llama)
    single = cmap.export(2, 1, tmp_path / "single.safetensors")
    affine = ps.Affine.load(single)
    assert torch.equal(affine.weight, cmap.mapping(2, 1).weight)
    assert affine.metadata["source_model"] == "tiny-llama" and affine.metadata["layer"] == "2"
    with pytest.raises(PatchscopesError, match="not a cross-model map"):
        CrossModelMap.load(single)
    with pytest.raises(PatchscopesError, match="no such map file"):
        CrossModelMap.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PatchscopesError, match="could not read the map"):
        CrossModelMap.load(tmp_path / "junk.safetensors")


@pytest.fixture(scope="module")
def tmp_gpt2():
    from patchscopes.testing import tiny_model

    return tiny_model("gpt2")


def test_map_works_through_both_engines(cmap, tiny_llama, bpe_wide, assert_same, tmp_path):
    text = "the cat sat on the mat"
    i, j = aligned_positions(tiny_llama, bpe_wide, text)[-2]
    a_ids, b_ids = tuple(tiny_llama.encode(text)), tuple(bpe_wide.encode(text))
    single = cmap.export(2, 1, tmp_path / "pair.safetensors")
    scopes = [
        ps.Patchscope(ps.Source(a_ids[: i + 1], 2, -1), ps.Target(b_ids[: j + 1], 1, -1, mapping=cmap.mapping(2, 1),
                                                                 model=bpe_wide)),
        ps.Patchscope(ps.Source(a_ids[: i + 1], 2, -1), ps.Target(b_ids[: j + 1], 1, -1, mapping=str(single),
                                                                 model=bpe_wide)),
        ps.Patchscope(ps.Source("the cat", 0, -1), ps.Target("the mat, x", 2, "x", mapping=cmap.mapping(0, 2),
                                                             model=bpe_wide), ps.Generate(max_new_tokens=4)),
    ]
    batched = ps.run(scopes, tiny_llama)
    assert_same(batched, ps.run(scopes, tiny_llama, engine="reference"))
    assert batched[0].top_token == batched[1].top_token
    assert batched[0].target_model == "tiny-llama-bpe-48"
    with pytest.raises(PatchscopesError, match="size 32"):
        ps.run([ps.Patchscope(ps.Source("the cat", 0), ps.Target("the cat", 0, mapping=cmap.mapping(0, 1)))],
               tiny_llama)


# -- the evaluation ----------------------------------------------------------------------------------------------
def test_cross_model_samples(cmap, tiny_llama, bpe_wide):
    frame = cross_model_samples(tiny_llama, bpe_wide, cmap, TEXTS[40:], samples=6, methods=list(CROSS_METHODS))
    attrs = frame.attrs
    assert attrs["samples"] == 6 and attrs["excluded_fit_documents"] == 0
    counts = frame["method"].value_counts().to_dict()
    assert counts == {"cross-model": 24, "cross-model-identity-prompt": 24, "token-identity": 12, "target-own": 6}
    own = frame[frame["method"] == "target-own"]
    assert set(own["layer"]) == {-1} and set(own["target_layer"]) == {-1}
    # Recompute one cross-model row by hand.
    row = frame[(frame["method"] == "cross-model") & (frame["layer"] == 2) & (frame["target_layer"] == 2)].iloc[0]
    windows = align_windows(tiny_llama, bpe_wide, [Document(t) for t in TEXTS[40:]])
    window = next(w for w in windows if w.digest.startswith(row["document"]) and
                  (row["source_position"], row["target_position"]) in w.pairs)
    i, j = row["source_position"], row["target_position"]
    a_ids, b_ids = window.source_ids[: i + 1], window.target_ids[: j + 1]
    final = ps.run(ps.Patchscope(ps.Source(a_ids, 2, -1), ps.Target(a_ids, 2, -1),
                                 ps.NextToken(top_k=1, full_logits=True)), tiny_llama, engine="reference")[0]
    patched = ps.run(ps.Patchscope(ps.Source(a_ids, 2, -1), ps.Target(b_ids, 2, -1, mapping=cmap.mapping(2, 2),
                                                                       model=bpe_wide)), tiny_llama,
                     engine="reference")[0]
    # the experiment compares decoded texts (token_strings), not the readable labels of results' top_tokens
    final_text = tiny_llama.token_strings([final.readings.top_token_ids[0]])[0]
    patched_text = bpe_wide.token_strings([patched.readings.top_token_ids[0]])[0]
    assert row["source_token"] == final_text and row["predicted_token"] == patched_text
    assert row["correct"] == (final_text == patched_text)
    logprobs = torch.log_softmax(final.logits.float(), -1)
    assert row["surprisal"] == pytest.approx(text_surprisal(tiny_llama, logprobs, patched_text), abs=1e-4)
    first = tiny_llama.tokenizer(patched_text, add_special_tokens=False)["input_ids"][0]
    assert row["surprisal"] == pytest.approx(float(-logprobs[first]), abs=1e-4)
    assert math.isnan(text_surprisal(tiny_llama, logprobs, ""))
    own_row = own[own["sample"] == row["sample"]].iloc[0]
    assert row["same_as_target_own"] == (row["predicted_token"] == own_row["predicted_token"])
    assert own["same_as_target_own"].all()
    unpatched = ps.run(ps.Patchscope(ps.Source(b_ids, 2, -1), ps.Target(b_ids, 2, -1)), bpe_wide,
                       engine="reference")[0]
    assert own_row["predicted_token"] == bpe_wide.token_strings([unpatched.readings.top_token_ids[0]])[0]
    # Token identity compares ids of the same model.
    ti = frame[frame["method"] == "token-identity"]
    assert ti["same_as_target_own"].isna().all()
    assert set(zip(ti["layer"], ti["target_layer"])) == {(0, 0), (2, 2)}
    summary = summarize_cross_model(frame)
    cell = summary[(summary["method"] == "cross-model") & (summary["layer"] == 2) & (summary["target_layer"] == 2)]
    assert cell["n"].iloc[0] == 6
    part = frame[(frame["method"] == "cross-model") & (frame["layer"] == 2) & (frame["target_layer"] == 2)]
    assert cell["precision_at_1"].iloc[0] == pytest.approx(part["correct"].mean())
    assert (summary["precision_at_1_stripped"] >= summary["precision_at_1"]).all()
    assert cell["same_as_target_own"].iloc[0] == pytest.approx(part["same_as_target_own"].astype(bool).mean())
    assert summary[summary["method"] == "target-own"]["same_as_target_own"].iloc[0] == 1.0
    fig = cross_model_figure(summary)
    assert any(t.type == "heatmap" for t in fig.data)


def test_cross_model_checks(cmap, tiny_llama, bpe_wide, tmp_gpt2):
    with pytest.raises(PatchscopesError, match="unknown method"):
        cross_model_samples(tiny_llama, bpe_wide, cmap, TEXTS[40:], samples=2, methods=["logit-lens"])
    with pytest.raises(PatchscopesError, match="no map from layer 1"):
        cross_model_samples(tiny_llama, bpe_wide, cmap, TEXTS[40:], samples=2, layers="1")
    with pytest.raises(PatchscopesError, match="fitted on another model"):
        cross_model_samples(tmp_gpt2, bpe_wide, cmap, TEXTS[40:], samples=2)
    # Documents the map was fitted on are left out.
    fitted = [t for t, seen in zip(TEXTS, cmap.overlaps([Document(t).digest for t in TEXTS])) if seen]
    assert 0 < len(fitted) <= 40
    with pytest.raises(PatchscopesError, match="no evaluation text"):
        cross_model_samples(tiny_llama, bpe_wide, cmap, fitted, samples=2)
    frame = cross_model_samples(tiny_llama, bpe_wide, cmap, fitted + TEXTS[50:52], samples=5)
    assert frame.attrs["excluded_fit_documents"] == len(fitted) and frame.attrs["documents"] == 2


def test_cross_model_descriptions(cmap, tiny_llama, bpe_wide):
    entities = [Entity("the cat", "a cat"), Entity("the mat", None)]
    frame = cross_model_descriptions(tiny_llama, bpe_wide, cmap, entities, layers="2", max_new_tokens=4, sbert=False)
    cross = frame[frame["method"] == "cross-model"]
    same = frame[frame["method"] == "same-model"]
    assert len(cross) == 4 and len(same) == 2
    assert set(zip(cross["layer"], cross["target_layer"])) == {(2, 1), (2, 2)}
    assert set(cross["mapping"]) == {"cross-model-affine[2->1]", "cross-model-affine[2->2]"}
    assert set(same["mapping"]) == {"identity"} and set(same["target_layer"]) == {2}
    expected = ps.run(ps.Patchscope(ps.Source("the cat", 2, -1),
                                    ps.Target(ps.ENTITY_DESCRIPTION_PROMPT, 1, "x", mapping=cmap.mapping(2, 1),
                                              model=bpe_wide),
                                    ps.Generate(max_new_tokens=4, stop=(",", "\n"))), tiny_llama, engine="reference")
    got = cross[(cross["entity"] == "the cat") & (cross["target_layer"] == 1)]["generated"].iloc[0]
    assert got == expected[0].generated_text
    summary = summarize_cross_descriptions(frame)
    assert list(dict.fromkeys(summary["method"])) == ["cross-model", "same-model"]
    selfref = cross_model_descriptions(tiny_llama, bpe_wide, cmap, entities, layers="2", target_layers="2",
                                       max_new_tokens=3, sbert=False, reference="self")
    cross_refs = selfref[selfref["method"] == "cross-model"].set_index("entity")["reference"]
    same_refs = selfref[selfref["method"] == "same-model"].set_index("entity")["reference"]
    assert cross_refs.to_dict() == same_refs.to_dict()  # both scored against B's own descriptions


# -- the commands ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(tiny_llama, bpe_wide, tmp_path_factory):
    dirs = []
    for lm, name in ((tiny_llama, "a"), (bpe_wide, "b")):
        folder = tmp_path_factory.mktemp(f"model-{name}")
        lm.hf.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        dirs.append(folder)
    return dirs


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "wiki.txt"
    path.write_text("\n\n".join(TEXTS) + "\n")
    return path


@pytest.fixture(scope="module")
def fitted_file(model_dirs, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps") / "map.safetensors"
    result = runner.invoke(app, ["fit-map", "--source-model", str(model_dirs[0]), "--target-model", str(model_dirs[1]),
                                 "--text", str(text_file), "--layers", "0,2", "--target-layers", "1:3",
                                 "--samples", "300", "--out", str(out), "--threads", "1"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "4 pairs" in result.output and "wrote" in result.output
    return out


def test_fit_map_command(fitted_file, model_dirs):
    loaded = CrossModelMap.load(fitted_file)
    assert loaded.pairs == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert loaded.config["data"]["samples"] == 300 and loaded.config["split"]["part"] == "fit"
    assert loaded.source_name == str(model_dirs[0]) and loaded.target_name == str(model_dirs[1])


def test_eval_cross_model_command(fitted_file, text_file, tmp_path):
    entities = tmp_path / "entities.csv"
    entities.write_text("entity,reference\nthe cat,a small cat\nthe mat,a floor mat\n")
    out, fig = tmp_path / "cross.json", tmp_path / "cross.html"
    result = runner.invoke(app, ["eval", "cross-model", "--map", str(fitted_file), "--text", str(text_file),
                                 "--samples", "4", "--entities", str(entities), "--entity-layers", "2",
                                 "--max-new-tokens", "3", "--json", str(out), "--plot", str(fig)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "next-token Precision@1" in result.output and "entity description" in result.output
    data = json.loads(out.read_text())
    methods = {r["method"] for r in data["next_token"]}
    assert methods == {"cross-model", "token-identity", "target-own"}
    for rec in data["next_token"]:
        assert {"layer", "target_layer", "precision_at_1", "precision_at_1_stripped", "surprisal", "n"} <= set(rec)
        assert rec["n"] == 4
    assert len(data["entities"]) == 2 * 2 + 2  # 2 entities × (2 cross pairs + 1 same-model layer)
    for rec in data["entities"]:
        assert {"entity", "layer", "target_layer", "description", "rougeL", "rouge1", "sbert", "method"} <= set(rec)
    assert data["next_token_settings"]["samples"] == 4
    assert fig.is_file()


@pytest.mark.parametrize("args, match", [
    (["--map", "missing.safetensors", "--text", "TEXT"], "no such map file"),
    (["--map", "MAP"], "nothing to evaluate"),
    (["--map", "MAP", "--text", "TEXT", "--layers", "1"], "no map from layer 1"),
    (["--map", "MAP", "--text", "TEXT", "--methods", "logit-lens"], "unknown method"),
    (["--map", "MAP", "--text", "TEXT", "--source-model", "B"], "fitted on another model"),
    (["--map", "MAP", "--text", "TEXT", "--json", "x.csv"], "must end in .json"),
    (["--map", "MAP", "--entities", "E", "--plot", "x.html"], "needs the next-token results"),
])
def test_eval_cross_model_bad_input(fitted_file, text_file, model_dirs, tmp_path, args, match):
    entities = tmp_path / "e.csv"
    entities.write_text("entity\nthe cat\n")
    subs = {"MAP": str(fitted_file), "TEXT": str(text_file), "B": str(model_dirs[1]), "E": str(entities)}
    result = runner.invoke(app, ["eval", "cross-model", *[subs.get(a, a) for a in args], "--samples", "2"], env=ENV)
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split())


@pytest.mark.parametrize("args, match", [
    (["--layers", "9"], "out of range"),
    (["--out", "map.bin"], "must end in .safetensors"),
    (["--text", "/nonexistent.txt"], "no such text file"),
])
def test_fit_map_bad_input(model_dirs, text_file, args, match):
    base = {"--source-model": str(model_dirs[0]), "--target-model": str(model_dirs[1]), "--text": str(text_file),
            "--layers": "0", "--target-layers": "0"}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    result = runner.invoke(app, ["fit-map", *[x for kv in base.items() for x in kv], "--samples", "50"], env=ENV)
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split())
