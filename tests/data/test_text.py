"""Reading documents from text files, the hash split into fit and eval parts, and token windows."""

from __future__ import annotations

import pytest

from patchscopes.data.text import (
    Document,
    data_fingerprint,
    is_heading,
    parse_documents,
    read_documents,
    split_documents,
    split_of,
    token_windows,
)
from patchscopes.errors import PatchscopesError

WIKI = """
 = Homarus gammarus =

 Homarus gammarus is a large crustacean .
 It is found in the eastern Atlantic .

 = = Description = =

 The first pair of pereiopods is armed with claws .

 = = = Ecology = = =
 Lobsters are omnivores .
"""


def test_paragraphs_and_headings():
    docs, headings = parse_documents(WIKI, "wiki.txt")
    assert headings == 3
    assert [d.text for d in docs] == [
        "Homarus gammarus is a large crustacean .\nIt is found in the eastern Atlantic .",
        "The first pair of pereiopods is armed with claws .",
        "Lobsters are omnivores .",
    ]
    assert docs[0].origin == "wiki.txt:4"
    assert is_heading(" = = Description = = ")
    assert not is_heading("x = y = z")
    assert not is_heading("==")


def test_read_documents_drops_duplicates_and_resolves_data_dir(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("one para\n\ntwo para\n\none para\n")
    (tmp_path / "b.txt").write_text("two para\n\nthree para\n")
    docs = read_documents([tmp_path / "a.txt", tmp_path / "b.txt"])
    assert [d.text for d in docs] == ["one para", "two para", "three para"]
    assert docs.duplicates == 2
    monkeypatch.setenv("PATCHSCOPES_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert len(read_documents("b.txt")) == 2  # found under the data dir


def test_read_documents_errors(tmp_path):
    with pytest.raises(PatchscopesError, match="no such text file"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n = Only a heading =\n\n")
    with pytest.raises(PatchscopesError, match="no documents"):
        read_documents(tmp_path / "empty.txt")


def test_split_is_deterministic_disjoint_and_order_free():
    docs = [Document(f"document number {i} with some words") for i in range(400)]
    fit, evaluation = split_documents(docs, 0.5)
    assert {d.text for d in fit}.isdisjoint({d.text for d in evaluation})
    assert len(fit) + len(evaluation) == 400
    assert 150 < len(evaluation) < 250
    _, eval2 = split_documents(list(reversed(docs)), 0.5)
    assert {d.text for d in eval2} == {d.text for d in evaluation}
    assert split_of(docs[0].text) == split_of(docs[0].digest, is_digest=True)
    assert split_documents(docs, 0.0)[1] == [] and split_documents(docs, 1.0)[0] == []
    # A larger eval fraction only moves documents from fit to eval.
    _, bigger = split_documents(docs, 0.7)
    assert {d.text for d in evaluation} <= {d.text for d in bigger}


def test_fingerprint_depends_on_text_and_order():
    assert data_fingerprint(["a", "b"]) == data_fingerprint(["a", "b"])
    assert data_fingerprint(["a", "b"]) != data_fingerprint(["b", "a"])
    assert data_fingerprint(["ab"]) != data_fingerprint(["a", "b"])


def test_windows_cut_long_documents_and_count_short_ones(tiny_llama):
    docs = [Document("x" * 25), Document("y"), Document("")]
    windows, skipped = token_windows(tiny_llama, docs, max_tokens=11, min_tokens=2)
    # Byte tokenizer: one token per character, <bos> in front of every window (10 text tokens per window).
    assert [w.n_text for w in windows] == [10, 10, 5]
    assert all(w.ids[0] == 1 and w.start == 1 for w in windows)
    assert {w.document for w in windows} == {0}
    assert skipped == 2  # "y" (1 token) and "" (none)
    with pytest.raises(PatchscopesError):
        token_windows(tiny_llama, docs, max_tokens=1)
