"""Source contexts and subject positions: the subject's last token, located samples, corpus windows and the
order of preference of context kinds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from patchscopes.data.contexts import corpus_windows, locate_samples, locate_subject, subject_contexts
from patchscopes.data.relation_loaders import load_relation
from patchscopes.data.relation_types import Relation, RelationSample, SourceContext
from patchscopes.errors import PatchscopesError


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


def test_context_preference_and_limits(tmp_path, write_tsv_relation):
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
