"""Start-up: the load-time proof of a converted checkpoint is stored beside its weights and reused by later
loads; the proof's tiny forwards run on one CPU thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import patchscopes as ps
from patchscopes.models import language_model as language_model_module
from patchscopes.models import loading, mark_converted, proof
from patchscopes.testing import tiny_model


@pytest.fixture
def converted_folder(tmp_path, monkeypatch):
    """A tiny Llama saved as a converted GGUF checkpoint would be (with its completion mark), and a fresh
    in-process proof cache."""
    folder = tmp_path / "converted"
    lm = tiny_model("llama")
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    gguf = tmp_path / "stand-in.gguf"
    gguf.write_bytes(b"GGUF")
    mark_converted(folder, gguf)
    monkeypatch.setattr(loading, "_PROVEN", {})
    return folder


def _forbid_proof(monkeypatch):
    def fail(model):
        raise AssertionError("the proof ran again")

    monkeypatch.setattr(language_model_module, "prove_layout", fail)


def test_a_stored_proof_is_reused_by_a_later_load(converted_folder, monkeypatch):
    first = ps.load_model(str(converted_folder))
    stored = json.loads((converted_folder / loading.PROOF_FILE).read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["prefix_cache"] is True
    monkeypatch.setattr(loading, "_PROVEN", {})  # as in a new process
    _forbid_proof(monkeypatch)
    again = ps.load_model(str(converted_folder))
    assert again.fast_path == first.fast_path


def test_a_stored_proof_is_not_reused_for_another_dtype(converted_folder, monkeypatch):
    ps.load_model(str(converted_folder))
    monkeypatch.setattr(loading, "_PROVEN", {})
    calls = []
    real = language_model_module.prove_layout
    monkeypatch.setattr(language_model_module, "prove_layout", lambda model: calls.append(1) or real(model))
    ps.load_model(str(converted_folder), dtype="bfloat16")
    assert calls == [1]
    assert len(json.loads((converted_folder / loading.PROOF_FILE).read_text())) == 2


def test_a_corrupt_proof_file_is_proved_again_and_rewritten(converted_folder, monkeypatch):
    (converted_folder / loading.PROOF_FILE).write_text("{not json")
    calls = []
    real = language_model_module.prove_layout
    monkeypatch.setattr(language_model_module, "prove_layout", lambda model: calls.append(1) or real(model))
    ps.load_model(str(converted_folder))
    assert calls == [1]
    assert len(json.loads((converted_folder / loading.PROOF_FILE).read_text())) == 1


def test_other_folders_keep_no_proof_file(tiny_dir, monkeypatch):
    monkeypatch.setattr(loading, "_PROVEN", {})
    ps.load_model(tiny_dir)
    assert not (Path(tiny_dir) / loading.PROOF_FILE).exists()


def test_the_proof_runs_on_one_cpu_thread_and_restores_the_count(tiny_llama, monkeypatch):
    seen = []
    monkeypatch.setattr(proof, "_prove", lambda model: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        proof.prove_layout(tiny_llama)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
