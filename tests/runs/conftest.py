"""Fixtures of the tests of run directories and executors."""

from __future__ import annotations

import pytest


def assert_same_readings(got, expected, *, exact: bool = False, atol: float = 1e-5) -> None:
    """Two lists of PatchResults agree: coordinates and readings (exactly, or probabilities within ``atol``)."""
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert (a.source_prompt, a.source_layer, a.source_position, a.target_layer) == \
            (b.source_prompt, b.source_layer, b.source_position, b.target_layer), f"result {k}"
        ra, rb = a.readings, b.readings
        assert ra.top_token_ids == rb.top_token_ids, f"result {k}: top tokens differ"
        assert ra.generated_text == rb.generated_text, f"result {k}: generated text differs"
        if exact:
            assert ra.top_probs == rb.top_probs, f"result {k}: probabilities differ"
        else:
            assert max(abs(p - q) for p, q in zip(ra.top_probs, rb.top_probs)) <= atol, f"result {k}"


@pytest.fixture
def same_readings():
    """:func:`assert_same_readings` as a fixture."""
    return assert_same_readings
