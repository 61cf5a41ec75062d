"""Numbers checked at the door: top-k within the vocabulary, noise scales finite and positive, tensors loaded
from files finite (the file and the tensor named), NaN or infinite readings an error naming the patch, and
prompts that are not valid Unicode text refused."""

from __future__ import annotations

import math

import pytest
import torch

import patchscopes as ps
from patchscopes import PatchscopesError
from patchscopes.errors import check_text, read_text_file
from patchscopes.experiments.causal_tracing import causal_trace
from patchscopes.storage import read_safetensors, write_safetensors

PROMPT = "Hi you"


# -- NaN/inf in a result: an error naming the patch -----------------------------------------------------------
@pytest.mark.parametrize("engine", ["batched", "reference"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_reading_is_an_error_naming_the_patch(tiny_llama, engine, bad):
    scopes = [ps.Patchscope(ps.Source(PROMPT, 1, -1), ps.Target(PROMPT, 1, -1)),
              ps.Patchscope(ps.Source(PROMPT, 2, 3), ps.Target(PROMPT, 2, -1, mapping=lambda h: h * bad))]
    with pytest.raises(PatchscopesError, match=r"patch 1 \(source layer 2, position 3 of 'Hi you' → target layer 2, "
                                               r"position 6\) gave a probability of nan") as info:
        ps.run(scopes, tiny_llama, engine=engine)
    assert "float32" in info.value.hint


def test_finite_readings_pass(tiny_llama):
    [result] = ps.run(ps.Patchscope(ps.Source(PROMPT, 1, -1), ps.Target(PROMPT, 1, -1)), tiny_llama, baseline=True)
    assert all(math.isfinite(p) for p in result.top_probs)


# -- top-k and noise scales -------------------------------------------------------------------------------------
def test_top_k_at_most_the_vocabulary(tiny_llama):
    n = tiny_llama.vocab_size
    scope = ps.Patchscope(ps.Source(PROMPT, 1, -1), ps.Target(PROMPT, 1, -1), ps.NextToken(top_k=n + 1))
    with pytest.raises(PatchscopesError, match=f"top_k {n + 1} is more than the vocabulary of tiny-llama \\({n} "
                                               "tokens\\)") as info:
        ps.run(scope, tiny_llama)
    assert f"1..{n}" in info.value.hint
    ok = ps.Patchscope(ps.Source(PROMPT, 1, -1), ps.Target(PROMPT, 1, -1), ps.NextToken(top_k=n))
    assert len(ps.run(ok, tiny_llama)[0].top_probs) == n
    with pytest.raises(PatchscopesError, match="top_k 100000 is more than the vocabulary"):
        ps.sweep(tiny_llama, PROMPT, layers="0", positions="-1", top_k=100000)


@pytest.mark.parametrize("scale", [-1.0, math.nan, math.inf, -math.inf, "1", True])
def test_embedding_noise_scale_is_a_finite_non_negative_number(tiny_llama, scale):
    target = ps.Target(PROMPT, 0, noise=ps.EmbeddingNoise("you", scale=scale))
    with pytest.raises(PatchscopesError, match="the noise scale must be a finite number"):
        ps.run(ps.Patchscope(None, target), tiny_llama)


def test_embedding_noise_values_are_finite(tiny_llama):
    values = torch.zeros(3, tiny_llama.hidden_size)
    values[1, 2] = math.nan
    target = ps.Target(PROMPT, 0, noise=ps.EmbeddingNoise("you", values=values))
    with pytest.raises(PatchscopesError, match="NaN or infinite"):
        ps.run(ps.Patchscope(None, target), tiny_llama)


@pytest.mark.parametrize("scale", [-1.0, 0.0, math.nan, math.inf, "0.1"])
def test_causal_tracing_noise_scale_is_finite_and_above_zero(tiny_llama, scale):
    with pytest.raises(PatchscopesError, match="noise_scale must be a finite number above 0") as info:
        causal_trace(tiny_llama, PROMPT, "Hi", noise_scale=scale, noise_samples=1)
    assert info.value.hint


def test_causal_tracing_noise_given_is_finite(tiny_llama):
    noise = torch.full((1, 2, tiny_llama.hidden_size), math.nan)
    with pytest.raises(PatchscopesError, match="the noise given holds NaN"):
        causal_trace(tiny_llama, PROMPT, "Hi", noise=noise, noise_samples=1)


@pytest.mark.parametrize("field", ["rows", "tokens", "bytes"])
@pytest.mark.parametrize("value", [0, -3, 1.5, "10", True, math.nan])
def test_batch_budget_fields_are_positive_integers(field, value):
    with pytest.raises(PatchscopesError, match=f"the batch budget's {field} must be"):
        ps.BatchBudget(**{field: value})


# -- tensors loaded from files: finite, the file and the tensor named --------------------------------------
def _nan(*shape: int) -> torch.Tensor:
    t = torch.zeros(*shape)
    t.view(-1)[1] = math.nan
    return t


def test_read_safetensors_refuses_non_finite_tensors(tmp_path):
    path = write_safetensors(tmp_path / "x.safetensors", {"ok": torch.ones(2), "w": _nan(2, 2)}, {}, "the test")
    with pytest.raises(PatchscopesError, match=r"the thing .*x\.safetensors: the tensor 'w' holds 1 NaN or "
                                               "infinite value\n") as info:
        read_safetensors(path, "the thing")
    assert "corrupt" in info.value.hint
    ints = write_safetensors(tmp_path / "i.safetensors", {"ids": torch.arange(3)}, {}, "the test")
    assert read_safetensors(ints, "ids")[1]["ids"].tolist() == [0, 1, 2]


def test_a_mapping_file_with_nan_is_refused(tmp_path):
    path = tmp_path / "map.safetensors"
    ps.Affine(_nan(4, 4), torch.zeros(4)).save(path)
    with pytest.raises(PatchscopesError, match=r"the mapping .*map\.safetensors: the tensor 'weight' holds"):
        ps.Affine.load(path)
    ps.Affine(torch.eye(4), torch.full((4,), math.inf)).save(path)
    with pytest.raises(PatchscopesError, match="the tensor 'bias' holds 4 NaN or infinite values"):
        ps.Affine.load(path)


def test_a_lens_with_nan_weights_is_refused(tmp_path):
    lens = ps.Lens("tuned", {0: ps.Affine(_nan(8, 8), torch.zeros(8))}, {"model": {"name": "x"}})
    folder = lens.save(tmp_path / "lens")
    with pytest.raises(PatchscopesError, match=r"lens\.safetensors: the tensor 'layer\.0\.weight' holds 1 NaN"):
        ps.Lens.load(folder)


def test_a_soft_prompt_with_nan_is_refused(tmp_path):
    path = ps.SoftPrompt(_nan(2, 8), "a", "b").save(tmp_path / "soft.safetensors")
    with pytest.raises(PatchscopesError, match=r"the soft prompt .*soft\.safetensors: the tensor 'vectors'"):
        ps.SoftPrompt.load(path)


@pytest.mark.parametrize(("weight", "beta", "message"), [
    (_nan(4, 4), 1.0, "the tensor 'weight' holds 1 NaN"),
    (torch.eye(4), math.nan, "its β is nan"),
    (torch.eye(4), math.inf, "its β is inf"),
])
def test_an_lre_file_with_nan_is_refused(tmp_path, weight, beta, message):
    lre = ps.LinearRelation("capital", "capital", 0, weight, torch.zeros(4), beta, "{} is in", [], {})
    path = lre.save(tmp_path / "lre.safetensors")
    with pytest.raises(PatchscopesError, match=message):
        ps.LinearRelation.load(path)


# -- prompts that are not text, files that are not UTF-8 -----------------------------------------------------------
NOT_UTF8 = b"Caf\xe9".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(("where", "text", "message"), [
    ("source", "a\ud800b", "the source prompt 'a\\\\ud800b' holds a lone surrogate '\\\\ud800' at character 1"),
    ("target", "x\udfff", "the target prompt 'x\\\\udfff' holds a lone surrogate"),
    ("source", NOT_UTF8, "the source prompt 'Caf\\\\xe9' has a byte that is not UTF-8 \\(0xE9, at character 3\\)"),
    ("answer", "\ud800", "the answer"),
    ("soft", "\ud800", "the soft prompt's text after the vectors"),
])
def test_text_that_is_not_unicode_is_refused_naming_it(tiny_llama, where, text, message):
    source = ps.Source(text if where == "source" else PROMPT, 1, -1)
    prompt = ps.SoftPrompt(torch.ones(1, tiny_llama.hidden_size), "a", text) if where == "soft" else (
        text if where == "target" else PROMPT)
    readout = ps.AnswerProbs(answers=(text,)) if where == "answer" else ps.NextToken()
    target = ps.Target((1, 2, 3) if where == "answer" else prompt, 0 if where == "soft" else 1, -1)
    scope = ps.Patchscope(None if where == "soft" else source, target, readout)
    with pytest.raises(PatchscopesError, match=message) as info:
        ps.run(scope, tiny_llama)
    assert info.value.hint


def test_a_sweep_refuses_a_prompt_with_a_lone_surrogate(tiny_llama):
    with pytest.raises(PatchscopesError, match="lone surrogate"):
        ps.sweep(tiny_llama, "Hi \ud800", layers="0", positions="-1")


def test_check_text_passes_valid_text():
    for text in ("", "東京は日本の首都です", "emoji 😀", "a\u00e9"):
        assert check_text(text) == text


def test_read_text_file_names_the_file_byte_and_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"line one\nline tw\xff\n")
    with pytest.raises(PatchscopesError, match=r"the notes .*notes\.txt is not UTF-8 text: byte 16 \(0xFF, line 2\)"):
        read_text_file(path, "the notes")
    path.write_bytes(b"\xef\xbb\xbfwith a BOM")
    assert read_text_file(path) == "with a BOM"
    with pytest.raises(PatchscopesError, match="could not read the file"):
        read_text_file(tmp_path / "missing.txt")


def test_text_and_relation_files_are_read_as_utf8(tmp_path):
    from patchscopes.data.text import read_documents

    bad = tmp_path / "doc.txt"
    bad.write_bytes(b"ok\n\nna\xefve\n")
    with pytest.raises(PatchscopesError, match=r"the text file .*doc\.txt is not UTF-8 text: byte 6 \(0xEF, line 3\)"):
        read_documents([bad])
    rel = tmp_path / "rel.json"
    rel.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(PatchscopesError, match=r"the relation file .*rel\.json is not UTF-8 text: byte 13"):
        ps.load_relation(rel)
