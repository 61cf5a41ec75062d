"""Lenses: the closed-form affine fit, the tuned lens's training and checkpoints, saving, loading and refusal."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import patchscopes as ps
from patchscopes.errors import PatchscopesError
from patchscopes.lenses import (
    Lens,
    TunedLensSettings,
    capture_all_layers,
    fit_affine,
    fit_affine_lens,
    plan_fit_data,
    train_tuned_lens,
)
from patchscopes.testing import tiny_model

TEXTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times." for i in range(24)]


@pytest.fixture(scope="module")
def affine_lens(tiny_llama):
    return fit_affine_lens(tiny_llama, TEXTS[:12], samples=600, max_tokens=48)


def test_fit_affine_recovers_a_known_map():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 7, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(200, 7, generator=g, dtype=torch.float64) * 3 + 10  # far from zero: the bias matters
    f = fit_affine(x, x @ weight.T + bias)
    assert torch.allclose(f.weight.double(), weight, atol=1e-4)
    assert torch.allclose(f.bias.double(), bias, atol=1e-3)
    noisy = fit_affine(x, x @ weight.T + bias + 0.01 * torch.randn(200, 5, generator=g, dtype=torch.float64))
    assert torch.allclose(noisy.weight.double(), weight, atol=0.01)


def test_ridge_shrinks_the_weights_not_the_bias():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 4, generator=g)
    y = x @ torch.randn(3, 4, generator=g).T + 5.0
    plain, mild, strong = (fit_affine(x, y, ridge) for ridge in (0.0, 0.1, 1e6))
    assert plain.weight.norm() > mild.weight.norm() > strong.weight.norm()
    assert strong.weight.abs().max() < 1e-4
    assert torch.allclose(strong.bias, y.mean(0), atol=1e-3)  # all weight gone: the bias is the mean
    with pytest.raises(PatchscopesError, match="non-negative"):
        fit_affine(x, y, -1.0)


def test_underdetermined_fit_does_not_fail():
    x = torch.randn(3, 10)
    f = fit_affine(x, 2 * x)
    assert torch.allclose(f(x), 2 * x, atol=1e-3)  # interpolates the few samples


def test_affine_lens_maps_towards_the_last_layer(tiny_llama, affine_lens):
    lm = tiny_llama
    last = lm.num_layers - 1
    assert affine_lens.kind == "affine" and affine_lens.layers == list(range(lm.num_layers))
    assert torch.equal(affine_lens.mapping(last).weight, torch.eye(lm.hidden_size))
    assert affine_lens.mapping(-1) is affine_lens.mapping(last)
    assert affine_lens.config["model"]["num_layers"] == lm.num_layers
    assert affine_lens.config["data"]["samples"] == 600
    # On held-out text, the map is closer to the last layer than the identity is.
    data = plan_fit_data(lm, TEXTS[12:], samples=200, max_tokens=48)
    hidden = capture_all_layers(lm, [w.ids for w in data.windows], data.positions)
    for layer in range(last):
        mapped = affine_lens.mapping(layer)(hidden[:, layer])
        err = (mapped - hidden[:, last]).pow(2).mean()
        assert err < (hidden[:, layer] - hidden[:, last]).pow(2).mean()
    with pytest.raises(PatchscopesError, match="no map for layer"):
        affine_lens.mapping(7)


def test_lens_is_a_patchscope_mapping(tiny_llama, affine_lens):
    """A lens read at l* = L-1 with T = S equals head(f(h)) computed by hand, in both engines."""
    lm = tiny_llama
    prompt = "the lazy dog"
    layer, last = 1, lm.num_layers - 1
    scope = ps.Patchscope(ps.Source(prompt, layer, 4),
                          ps.Target(prompt, last, 4, mapping=affine_lens.mapping(layer)),
                          ps.NextToken(top_k=3, full_logits=True, position=4))
    hidden = capture_all_layers(lm, [lm.encode(prompt)], [[4]])[0, layer]
    expected = lm.head(affine_lens.mapping(layer)(hidden[None]))[0]
    for engine in ("batched", "reference"):
        got = ps.run(scope, lm, engine=engine)[0]
        assert got.mapping == "affine-lens[1]"
        assert torch.allclose(got.logits, expected, atol=1e-4)


def test_save_load_round_trip(tmp_path, tiny_llama, affine_lens):
    affine_lens.save(tmp_path / "lens")
    assert {p.name for p in (tmp_path / "lens").iterdir()} == {"lens.json", "lens.safetensors"}
    config = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert config["kind"] == "affine" and config["model"]["hidden_size"] == tiny_llama.hidden_size
    assert len(config["data"]["fingerprint"]) == 64
    loaded = Lens.load(tmp_path / "lens", model=tiny_llama)
    assert loaded.kind == "affine" and loaded.layers == affine_lens.layers
    for layer in loaded.layers:
        assert torch.equal(loaded.maps[layer].weight, affine_lens.maps[layer].weight)
        assert torch.equal(loaded.maps[layer].bias, affine_lens.maps[layer].bias)
    assert torch.equal(loaded.fit_documents, affine_lens.fit_documents)
    assert loaded.config["data"] == affine_lens.config["data"]
    # The lens knows its documents (and not the others).
    fitted = [ps.data.text.Document(t).digest for t in TEXTS[:12]]
    held_out = [ps.data.text.Document(t).digest for t in TEXTS[12:]]
    assert any(loaded.overlaps(fitted)) and not any(loaded.overlaps(held_out))


def test_load_refuses_another_model(tmp_path, tiny_llama, affine_lens, wide_llama):
    affine_lens.save(tmp_path / "lens")
    with pytest.raises(PatchscopesError, match=r"another model \(tiny-llama, layers 3\)"):
        Lens.load(tmp_path / "lens", model=wide_llama)
    same_shape = tiny_model("llama", seed=1)  # same sizes, other weights
    with pytest.raises(PatchscopesError, match="weights differ"):
        Lens.load(tmp_path / "lens", model=same_shape)
    with pytest.raises(PatchscopesError, match="not a lens folder"):
        Lens.load(tmp_path)


def test_tuned_lens_loss_decreases_and_resumes(tmp_path, tiny_llama):
    lm = tiny_llama
    settings = TunedLensSettings(steps=8, batch_size=32, lr=3e-2, samples=300, max_tokens=48)
    full = train_tuned_lens(lm, TEXTS[:12], settings=settings)
    losses = full.config["training"]["losses"]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert full.kind == "tuned"
    assert torch.equal(full.mapping(-1).weight, torch.eye(lm.hidden_size))

    ckpt = tmp_path / "ckpt.safetensors"

    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_tuned_lens(lm, TEXTS[:12], settings=settings, checkpoint=ckpt, checkpoint_every=2,
                         on_step=interrupt)
    with safe_open(str(ckpt), framework="pt") as fh:  # safetensors, nothing pickled
        assert json.loads(fh.metadata()["checkpoint"])["step"] == 4
    steps_run = []
    resumed = train_tuned_lens(lm, TEXTS[:12], settings=settings, checkpoint=ckpt,
                               on_step=lambda step, loss: steps_run.append(step))
    assert steps_run == [5, 6, 7, 8]
    assert resumed.config["training"]["losses"] == pytest.approx(losses, rel=1e-4)
    for layer in full.layers:
        assert torch.allclose(resumed.maps[layer].weight, full.maps[layer].weight, atol=1e-5)

    other = TunedLensSettings(steps=8, batch_size=16, lr=3e-2, samples=300, max_tokens=48)
    with pytest.raises(PatchscopesError, match="other settings"):
        train_tuned_lens(lm, TEXTS[:12], settings=other, checkpoint=ckpt)


def test_unreadable_checkpoint_says_what_to_do(tmp_path, tiny_llama):
    ckpt = tmp_path / "old.pt"
    torch.save({"step": 3}, ckpt)  # a pickle, as earlier versions wrote: refused, never unpickled
    settings = TunedLensSettings(steps=2, batch_size=16, samples=100, max_tokens=32)
    with pytest.raises(PatchscopesError, match="could not read the checkpoint") as info:
        train_tuned_lens(tiny_llama, TEXTS[:4], settings=settings, checkpoint=ckpt)
    assert "delete it" in info.value.hint


def test_tuned_lens_settings_are_checked():
    with pytest.raises(PatchscopesError, match="optimizer"):
        TunedLensSettings(optimizer="lbfgs")
    with pytest.raises(PatchscopesError, match="steps"):
        TunedLensSettings(steps=0)
