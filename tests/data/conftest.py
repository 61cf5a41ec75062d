"""Fixtures of the data tests: small relation files in the JSON schema and the paper's TSV layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

TSV_COLUMNS = ["sample_id", "prompt_target", "position_target", "target_baseline", "object", "subject",
               "generations_baseline", "generations_baseline_str", "is_correct_baseline", "prompt_source",
               "position_source", "source_cropped_toks"]


def _write_json_relation(folder: Path, stem: str = "country_capital_city", **changes) -> Path:
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


def _write_tsv_relation(folder: Path, stem: str = "country_currency", rows: list[dict] | None = None) -> Path:
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


@pytest.fixture
def write_json_relation():
    """``write(folder, stem="country_capital_city", **changes)``: a JSON relation file (changes replace keys)."""
    return _write_json_relation


@pytest.fixture
def write_tsv_relation():
    """``write(folder, stem="country_currency", rows=None)``: a TSV in the paper's layout (rows: dicts)."""
    return _write_tsv_relation
