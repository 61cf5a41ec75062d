"""Parsing of layer and position SPECs (`all`, lists, ranges, mixes, negatives) and their errors."""

from __future__ import annotations

import re

import pytest

import patchscopes as ps
from patchscopes import PatchscopesError, parse_spec
from patchscopes.specs import check_spec, format_spec, parse_indices


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


@pytest.mark.parametrize("spec, index", [("10", 10), ("-11", -11), ([0, 12], 12), (10, 10)])
def test_out_of_range_indices(spec, index):
    with pytest.raises(PatchscopesError, match=f"position {index} is out of range: there are 10 positions"):
        parse_spec(spec, 10, what="position")


@pytest.mark.parametrize("spec, why", [
    # A range reaching past the end is refused, naming the range typed and the valid one, never clipped.
    ("1:100", "goes past the last position"), ("0:11", "goes past"), ("0:12:5", "goes past"),
    ("10:", "starts at position 10, past the last one"), ("12:20", "starts at position 12"),
    ("-11:", "has its start -11 before the first position"), ("-12:-2", "has its start -12"),
    ("0:-11", "has its end -11"),
])
def test_out_of_range_ranges(spec, why):
    with pytest.raises(PatchscopesError, match=f"the position range '{spec}' {why}.*there are 10 positions, "
                                               "0..9") as info:
        parse_spec(spec, 10, what="position")
    assert "0:10" in info.value.hint


@pytest.mark.parametrize("spec, expected", [("0:12:7", [0, 7]), ("0:10:3", [0, 3, 6, 9]), ("3:20:20", [3])])
def test_a_step_past_the_end_is_fine_when_no_index_lands_there(spec, expected):
    assert parse_spec(spec, 10) == expected


@pytest.mark.parametrize("spec", ["0:10000000000000", "0:99999999999999999999", "-99999999999999999999:",
                                  "99999999999999999999", "0:" + "9" * 5000, "0:10000000000000:1"])
def test_huge_numbers_are_refused_at_once(spec):
    with pytest.raises(PatchscopesError) as info:
        parse_spec(spec, 30)  # neither a huge list nor an OverflowError: bounds are checked before expansion
    assert info.value.hint


def test_a_range_never_builds_more_than_size_indices(monkeypatch):
    import patchscopes.specs as specs

    built = []
    real_range = range
    monkeypatch.setattr(specs, "range", lambda *a: built.append(real_range(*a)) or real_range(*a), raising=False)
    assert parse_spec("0:30", 30) == list(real_range(30))
    with pytest.raises(PatchscopesError):
        parse_spec("0:30000000", 30)
    assert all(len(r) <= 30 for r in built)


@pytest.mark.parametrize("spec, why", [
    ("1 2", "space inside a number"), ("0:1 0", "space inside"), ("1_0", "'_'"), ("1__2:3", "'_'"),
    ("+3", None), ("1e3", None), ("0x1f", None), ("1,2;3", None), ("--1", None), ("- 1", "space"),
])
def test_numbers_are_plain_ascii_integers(spec, why):
    with pytest.raises(PatchscopesError, match=re.escape(f"invalid layer spec {spec!r}") + (f".*{why}" if why else "")):
        parse_spec(spec, 10)


@pytest.mark.parametrize("spec, ascii_form", [("３", "3"), ("٣", "3"), ("１:３", "1:3"), ("0,٥", "0,5"), ("-３", "-3")])
def test_digits_of_other_scripts_are_refused_with_the_ascii_number(spec, ascii_form):
    with pytest.raises(PatchscopesError, match="digits that are not ASCII") as info:
        parse_spec(spec, 10)
    assert repr(ascii_form) in info.value.hint


@pytest.mark.parametrize("spec", ["10:2", "-1:-5", "", "  ", ",", "5:5", "0,5:2"])
def test_selecting_nothing_is_an_error_with_a_hint(spec):
    with pytest.raises(PatchscopesError, match="selects nothing") as info:
        parse_spec(spec, 30)
    assert info.value.hint


def test_bool_is_not_a_spec():
    with pytest.raises(PatchscopesError, match="invalid layer spec True"):
        parse_spec(True, 10)


def test_check_spec_checks_syntax_without_a_size():
    for good in ("all", "0:99999", "-1", "0,3:5", None, 7, [1, 2]):
        check_spec(good)
    for bad in ("0-5", "1 2", "٣", "1:2:3:4", [1.5]):
        with pytest.raises(PatchscopesError, match="invalid layer spec"):
            check_spec(bad)


@pytest.mark.parametrize("indices, text", [([0, 1, 2, 3, 5, 7, 8], "0:4,5,7,8"), ([4], "4"), ([2, 0, 1], "0:3")])
def test_format_spec_is_canonical(indices, text):
    assert format_spec(indices) == text
    assert parse_spec(text, 10) == sorted(indices)


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
    with pytest.raises(PatchscopesError, match="layer range '0:40' goes past the last layer: there are 3 layers"):
        ps.sweep(tiny_llama, "Hello", "token-identity", layers="0:40")
    with pytest.raises(PatchscopesError, match="position 6 is out of range: there are 6 positions"):
        ps.sweep(tiny_llama, "Hello", "token-identity", positions="6")
    with pytest.raises(PatchscopesError, match="target layer 5 is out of range"):
        ps.sweep(tiny_llama, "Hello", "token-identity", target_layers="5")
    with pytest.raises(PatchscopesError, match="invalid position spec"):
        ps.sweep(tiny_llama, "Hello", "token-identity", positions=["Hello", 0])


def test_parse_indices_reads_plain_numbers_only():
    assert parse_indices("0, -1,3") == (0, -1, 3)
    for bad in ("0:3", "", ",", "1_0", "1 2", "٣", "a"):
        with pytest.raises(PatchscopesError) as info:
            parse_indices(bad)
        assert "0,-1" in info.value.hint
