"""Results: PatchResult records, DataFrames, and the .json/.csv/.parquet round trips."""

from __future__ import annotations

import pandas as pd
import pytest

import patchscopes as ps
from patchscopes import Generate, Patchscope, PatchscopesError, Source, Target, load_results, save_results
from patchscopes.results import LIST_COLUMNS


@pytest.fixture(scope="module")
def frame(tiny_llama) -> pd.DataFrame:
    """Next-token and generation rows, with baselines: every column kind."""
    scopes = ps.plan_sweep(tiny_llama, ["Hello, world", "Paris"], "token-identity", layers="0,2",
                           positions="-1", top_k=4)
    scopes.append(Patchscope(Source("Paris", 1), Target("Tell me about x", 1, "x"), Generate(max_new_tokens=5)))
    return ps.results_to_frame(ps.run(scopes, tiny_llama, baseline=True))


def test_frame_columns(frame):
    assert len(frame) == 5
    for col in ("source_model", "source_prompt", "source_layer", "source_position", "source_token",
                "target_model", "target_prompt", "target_layer", "target_position", "mapping", "top_token",
                "top_tokens", "top_token_ids", "top_probs", "top_prob", "generated_text", "generated_token_ids",
                *LIST_COLUMNS, "baseline_generated_text"):
        assert col in frame.columns, col
    cols = list(frame.columns)
    assert cols.index("top_token") == cols.index("top_tokens") - 1
    assert cols.index("top_prob") == cols.index("top_probs") + 1
    gen = frame.iloc[-1]
    assert isinstance(gen.generated_text, str) and isinstance(gen.baseline_generated_text, str)
    assert frame.generated_text.iloc[:4].isna().all()


def test_to_record_is_flat(tiny_llama):
    result = ps.run(Patchscope(Source("Hi", 0), Target("Hi", 0)), tiny_llama)[0]
    record = result.to_record()
    assert "readings" not in record and "baseline" not in record
    assert record["baseline_top_tokens"] is None
    assert record["top_tokens"] == result.readings.top_tokens
    assert all(not hasattr(v, "shape") for v in record.values())
    assert ps.results_to_frame([]).empty


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_round_trip(frame, tmp_path, suffix):
    path = save_results(frame, tmp_path / "sub" / f"results{suffix}")
    assert path.is_file()
    back = load_results(path)
    assert list(back.columns) == list(frame.columns)
    assert len(back) == len(frame)
    for col in LIST_COLUMNS:
        for got, want in zip(back[col], frame[col]):
            if want is None:
                assert got is None or got != got, col  # None (or NaN in CSV)
            else:
                assert isinstance(got, list), (col, type(got))
                assert got == pytest.approx(want) if col.endswith("probs") else got == want, col
    for col in ("source_prompt", "source_layer", "source_position", "source_token", "target_layer", "top_token",
                "mapping"):
        assert list(back[col]) == list(frame[col]), col
    assert back.generated_text.iloc[-1] == frame.generated_text.iloc[-1]
    assert back.top_prob.tolist() == pytest.approx(frame.top_prob.tolist())


def test_round_trip_of_awkward_strings(tmp_path):
    frame = pd.DataFrame({"source_prompt": ['a "quoted", comma\nnewline', "ünïcödé ✓"],
                          "top_tokens": [[",", "\n"], ['"', "NA"]], "top_probs": [[0.5, 0.25], [0.125, 0.0]]})
    for suffix in (".json", ".csv", ".parquet"):
        back = load_results(save_results(frame, tmp_path / f"odd{suffix}"))
        assert list(back.source_prompt) == list(frame.source_prompt), suffix
        assert list(back.top_tokens) == list(frame.top_tokens), suffix
        assert list(back.top_probs) == list(frame.top_probs), suffix


def test_results_file_errors(frame, tmp_path):
    with pytest.raises(PatchscopesError, match=r"unknown results format '\.xlsx'"):
        save_results(frame, tmp_path / "results.xlsx")
    with pytest.raises(PatchscopesError, match="no such results file"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "results.txt").write_text("x")
    with pytest.raises(PatchscopesError, match=r"use \.json, \.csv or \.parquet"):
        load_results(tmp_path / "results.txt")


@pytest.fixture(scope="module")
def embedding_frame(tiny_llama) -> pd.DataFrame:
    """A patch into the embeddings, one read from them, a block patch and an unpatched run, in one table."""
    scopes = [Patchscope(Source("Paris", 1), Target("Tell me about x", "embeddings", "x")),
              Patchscope(Source("Paris", "embeddings"), Target("Tell me about x", 2, "x")),
              Patchscope(Source("Paris", 1), Target("Tell me about x", 1, "x")),
              Patchscope(None, Target("Tell me about x", 0))]
    return ps.results_to_frame(ps.run(scopes, tiny_llama))


def test_embeddings_layer_is_named_never_minus_one(embedding_frame):
    assert embedding_frame.target_layer.tolist() == ["embeddings", 2, 1, -1]
    assert embedding_frame.source_layer.tolist() == [1, "embeddings", 1, -1]
    assert embedding_frame.source_model.iloc[3] == ""  # -1 is left for the unpatched run only


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_embeddings_layer_round_trips(embedding_frame, tmp_path, suffix):
    back = load_results(save_results(embedding_frame, tmp_path / f"r{suffix}"))
    for col in ("source_layer", "target_layer"):
        assert back[col].tolist() == embedding_frame[col].tolist(), (suffix, col)
        assert all(isinstance(v, int) for v in back[col] if v != "embeddings"), (suffix, col)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_files_of_0_2_read_minus_one_as_embeddings(embedding_frame, tmp_path, suffix):
    """0.2 wrote -1 for a patch at the embeddings; such a file loads with the layer named."""
    old = embedding_frame.copy()
    for col in ("source_layer", "target_layer"):
        old[col] = [-1 if v == "embeddings" else v for v in old[col]]
    back = load_results(save_results(old, tmp_path / f"old{suffix}"))
    assert back.target_layer.tolist() == ["embeddings", 2, 1, -1]
    assert back.source_layer.tolist() == [1, "embeddings", 1, -1]


def test_block_layers_stay_integers(frame, tmp_path):
    back = load_results(save_results(frame, tmp_path / "r.csv"))
    assert back.target_layer.dtype.kind == "i" and back.source_layer.dtype.kind == "i"
