"""Parsing of layer and position SPECs (`all`, lists, ranges, mixes, negatives) and their errors."""

from __future__ import annotations

import pytest

import patchscopes as ps
from patchscopes import PatchscopesError, parse_spec


@pytest.mark.parametrize("spec, expected", [
    ("all", list(range(10))),
    (" ALL ", list(range(10))),
    (None, list(range(10))),
    ("0,3,5", [0, 3, 5]),
    ("5,3,0,3", [0, 3, 5]),
    ("2:6", [2, 3, 4, 5]),
    ("0:10:4", [0, 4, 8]),
    (":3", [0, 1, 2]),
    ("7:", [7, 8, 9]),
    ("::3", [0, 3, 6, 9]),
    ("-1", [9]),
    ("-3:", [7, 8, 9]),
    ("0,4:6,-1", [0, 4, 5, 9]),
    ("0, 2 , 4", [0, 2, 4]),
    ("0:10", list(range(10))),  # a range may reach exactly to the end
    ("-10:", list(range(10))),
    (4, [4]),
    (-2, [8]),
    ([1, -1, 1], [1, 9]),
    ((0, 2), [0, 2]),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec, 10) == expected


@pytest.mark.parametrize("spec", ["a", "1-3", "1:2:3:4", "0:5:0", "0:5:-1", "1.5", "1;2"])
def test_malformed_specs(spec):
    with pytest.raises(PatchscopesError, match="invalid layer spec") as info:
        parse_spec(spec, 10)
    assert "'2:10'" in str(info.value)  # the hint shows the syntax


@pytest.mark.parametrize("spec, index", [
    ("10", 10), ("-11", -11), ([0, 12], 12), (10, 10),
    # A range reaching past the end is refused like a single index, never clipped.
    ("1:100", 10), ("0:11", 10), ("0:12:5", 10), ("10:", 10), ("12:20", 12), ("-11:", -11), ("-12:-2", -12),
])
def test_out_of_range_specs(spec, index):
    with pytest.raises(PatchscopesError, match=f"position {index} is out of range: there are 10 positions"):
        parse_spec(spec, 10, what="position")


def test_empty_selection_and_bool():
    with pytest.raises(PatchscopesError, match="selects nothing"):
        parse_spec("5:2", 10)
    with pytest.raises(PatchscopesError, match="selects nothing"):
        parse_spec(",", 10)
    with pytest.raises(PatchscopesError, match="invalid layer spec True"):
        parse_spec(True, 10)


def test_numpy_integers():
    np = pytest.importorskip("numpy")
    assert parse_spec(np.arange(0, 10, 3), 10) == [0, 3, 6, 9]
    assert parse_spec([np.int64(-1)], 10) == [9]


@pytest.mark.parametrize("spec", [1.5, [1.7], [True], ["a"], [0, "Tower"], object()])
def test_non_integer_items(spec):
    with pytest.raises(PatchscopesError, match="invalid layer spec") as info:
        parse_spec(spec, 10)
    assert "integers" in str(info.value)


def test_bad_specs_in_a_sweep(tiny_llama):
    with pytest.raises(PatchscopesError, match="invalid layer spec '0-2'"):
        ps.sweep(tiny_llama, "Hello", "token-identity", layers="0-2")
    with pytest.raises(PatchscopesError, match="layer 3 is out of range: there are 3 layers"):
        ps.sweep(tiny_llama, "Hello", "token-identity", layers="0,3")
    with pytest.raises(PatchscopesError, match="position 6 is out of range: there are 6 positions"):
        ps.sweep(tiny_llama, "Hello", "token-identity", positions="6")
    with pytest.raises(PatchscopesError, match="target layer 5 is out of range"):
        ps.sweep(tiny_llama, "Hello", "token-identity", target_layers="5")
    with pytest.raises(PatchscopesError, match="invalid position spec"):
        ps.sweep(tiny_llama, "Hello", "token-identity", positions=["Hello", 0])
