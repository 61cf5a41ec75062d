"""Mappings f: identity, affine maps (with safetensors round trip), callables, and their checks."""

from __future__ import annotations

import pytest
import torch

import patchscopes as ps
from patchscopes import Affine, FunctionMapping, Identity, Patchscope, PatchscopesError, Source, Target
from patchscopes.mappings import affine_metadata, as_mapping, check_mapping


def _affine(d_in=4, d_out=3, **kwargs) -> Affine:
    gen = torch.Generator().manual_seed(0)
    return Affine(torch.randn(d_out, d_in, generator=gen), torch.randn(d_out, generator=gen), **kwargs)


def test_identity():
    h = torch.randn(2, 5)
    assert Identity()(h) is h
    assert as_mapping(None).name == "identity"


def test_affine_computes_h_wt_plus_b():
    f = _affine()
    h = torch.randn(6, 4)
    torch.testing.assert_close(f(h), h @ f.weight.T + f.bias)
    assert (f.in_features, f.out_features) == (4, 3)
    zero_bias = Affine(torch.eye(3))
    assert torch.equal(zero_bias.bias, torch.zeros(3))
    torch.testing.assert_close(zero_bias(h[:, :3]), h[:, :3])


def test_affine_shape_errors():
    with pytest.raises(PatchscopesError, match="must be a matrix"):
        Affine(torch.zeros(3))
    with pytest.raises(PatchscopesError, match=r"bias of shape \(4,\) does not fit weight of shape \(3, 4\)"):
        Affine(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(PatchscopesError, match="expects vectors of size 4, got 5"):
        _affine()(torch.zeros(1, 5))


def test_affine_save_load_round_trip(tmp_path):
    meta = affine_metadata(source_model="a", layers=[1, 2], fit={"n": 100})
    assert meta == {"source_model": "a", "layers": "[1, 2]", "fit": '{"n": 100}'}
    f = _affine(name="a-to-b", metadata=meta)
    path = tmp_path / "map.safetensors"
    f.save(path)
    g = Affine.load(path)
    assert torch.equal(g.weight, f.weight) and torch.equal(g.bias, f.bias)
    assert g.name == "a-to-b"
    assert g.metadata == meta
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == {"weight", "bias"}
        assert fh.metadata()["name"] == "a-to-b"


def test_affine_load_without_bias_and_name(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.eye(3)}, str(path))
    g = Affine.load(path)
    assert g.name == "plain" and torch.equal(g.bias, torch.zeros(3))


def test_affine_load_errors(tmp_path):
    with pytest.raises(PatchscopesError, match="no such mapping file"):
        Affine.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PatchscopesError, match="could not read mapping") as info:
        Affine.load(junk)
    assert "'weight' (d_out, d_in)" in str(info.value)
    from safetensors.torch import save_file

    no_weight = tmp_path / "no_weight.safetensors"
    save_file({"bias": torch.zeros(3)}, str(no_weight))
    with pytest.raises(PatchscopesError, match="could not read mapping"):
        Affine.load(no_weight)


def test_missing_map_file_in_a_scope(tiny_llama, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a model ran")

    monkeypatch.setattr(tiny_llama, "forward", boom)
    scope = Patchscope(Source("Hi", 0), Target("Hi", 0, mapping=str(tmp_path / "nope.safetensors")))
    with pytest.raises(PatchscopesError, match=r"no such mapping file: .*nope\.safetensors"):
        ps.run(scope, tiny_llama)
    with pytest.raises(PatchscopesError, match="no such mapping file"):
        ps.sweep(tiny_llama, "Hi", "token-identity", mapping=tmp_path / "nope.safetensors")


def test_map_file_in_a_scope(tiny_llama, tmp_path, assert_same):
    f = Affine(torch.eye(32) * 0.5, torch.full((32,), 0.1), name="half")
    path = tmp_path / "half.safetensors"
    f.save(path)
    by_path = ps.sweep(tiny_llama, "Hello there", "token-identity", layers="0,1", positions="-1", mapping=path)
    by_object = ps.sweep(tiny_llama, "Hello there", "token-identity", layers="0,1", positions="-1", mapping=f)
    assert list(by_path.mapping) == ["half", "half"]
    assert list(by_path.top_token_ids) == list(by_object.top_token_ids)
    identity = ps.sweep(tiny_llama, "Hello there", "token-identity", layers="0,1", positions="-1")
    assert list(identity.top_probs) != list(by_object.top_probs)


def test_as_mapping():
    f = _affine()
    assert as_mapping(f) is f
    fm = FunctionMapping(torch.tanh, name="tanh")
    assert as_mapping(fm) is fm

    def double(h):
        return 2 * h

    wrapped = as_mapping(double)
    assert isinstance(wrapped, FunctionMapping) and wrapped.name == "double"
    assert torch.equal(wrapped(torch.ones(1, 2)), torch.full((1, 2), 2.0))
    assert as_mapping(lambda h: h).name == "<lambda>"

    class Scale(torch.nn.Module):
        def forward(self, h):
            return h * 3

    assert as_mapping(Scale()).name == "Scale"
    with pytest.raises(PatchscopesError, match="a mapping must be None, a callable, or a path"):
        as_mapping(42)


def test_check_mapping():
    check_mapping(_affine(), 4, 3, dtype=torch.float32, device="cpu")
    with pytest.raises(PatchscopesError, match=r"turns a \(1, 4\) batch into \(1, 4\), but the target model needs"):
        check_mapping(Identity(), 4, 3, dtype=torch.float32, device="cpu")
    with pytest.raises(PatchscopesError, match="does not accept the source's hidden size 5"):
        check_mapping(_affine(), 5, 3, dtype=torch.float32, device="cpu")
    with pytest.raises(PatchscopesError, match="failed on a vector of size 4: ZeroDivisionError"):
        check_mapping(FunctionMapping(lambda h: 1 / 0), 4, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(PatchscopesError, match="into list"):
        check_mapping(FunctionMapping(lambda h: [h]), 4, 4, dtype=torch.float32, device="cpu")


def test_mapping_is_applied_to_h(tiny_llama, assert_same):
    """f(h) is what gets patched: a mapping to a fixed vector makes every source give the same reading."""
    fixed = torch.linspace(-1, 1, 32)

    def constant(h):
        return fixed.expand(h.shape[0], -1)

    scopes = [Patchscope(Source(p, layer, -1), Target("Tell me about x", 1, "x", mapping=constant))
              for p in ("Hello", "Paris is big") for layer in (0, 2)]
    results = ps.run(scopes, tiny_llama)
    assert len({tuple(r.readings.top_probs) for r in results}) == 1
    assert_same(results, ps.run(scopes, tiny_llama, engine="reference"))
