"""Parsing the layer and position specifications of the command line and of :func:`patchscopes.sweep`.

A SPEC is ``all``, a comma-separated list ``0,3,5``, a range ``2:10`` (Python's convention: 2 to 9; a
step is allowed, ``0:30:5``), or any mix ``0,4:8,-1``. Negative numbers count from the end. In Python,
an int or a list of ints works too.

One rule for every index, single or in a range: an index past the end (or before the start) is an error,
never cut off. ``0:40`` on a 30-layer model fails as ``39`` does ("layer 39 is out of range: there are 30
layers"); ``0:30``, ``:`` and ``5:`` reach exactly to the end.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from patchscopes.errors import PatchscopesError

Spec = str | int | Sequence[int] | None


def parse_spec(spec: Spec, size: int, *, what: str = "layer") -> list[int]:
    """Resolve ``spec`` against a dimension of ``size`` items into sorted, unique, non-negative indices.

    Args:
        spec: The specification (``None`` means ``all``).
        size: The number of items (layers, or tokens of a prompt).
        what: The name used in error messages.

    Raises:
        PatchscopesError: The spec is malformed or names an index out of range.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(size))
    if isinstance(spec, bool):
        raise PatchscopesError(f"invalid {what} spec {spec!r}")
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if ":" in part:
                    bounds = part.split(":")
                    if len(bounds) > 3:
                        raise ValueError
                    start = int(bounds[0]) if bounds[0] else 0
                    stop = int(bounds[1]) if bounds[1] else size
                    step = int(bounds[2]) if len(bounds) == 3 and bounds[2] else 1
                    if step <= 0:
                        raise ValueError
                    items.extend(_range_items(start, stop, step, size))
                else:
                    items.append(int(part))
            except ValueError:
                raise PatchscopesError(
                    f"invalid {what} spec {spec!r}",
                    hint="use 'all', a list like '0,3,5', a range like '2:10' (2 to 9), or a mix",
                ) from None
    else:
        try:
            items = [_as_index(i) for i in spec]
        except TypeError:
            raise PatchscopesError(
                f"invalid {what} spec {spec!r}",
                hint=f"give {what}s as integers, a list of integers, or a string like '0,3,5' or '2:10'",
            ) from None
    out = set()
    for index in items:
        if not -size <= index < size:
            raise PatchscopesError(
                f"{what} {index} is out of range: there are {size} {what}s",
                hint=f"use {what}s 0..{size - 1} (or -1..-{size} from the end)",
            )
        out.add(index % size)
    if not out:
        raise PatchscopesError(f"the {what} spec {spec!r} selects nothing")
    return sorted(out)


def _as_index(item: object) -> int:
    """An integer index (Python or NumPy int); anything else, bools and floats included, is a TypeError."""
    if isinstance(item, bool):
        raise TypeError(item)
    return operator.index(item)


def _range_items(start: int, stop: int, step: int, size: int) -> list[int]:
    """The indices of ``start:stop:step``, negative bounds counted from the end. A bound before the start
    comes back as itself, and a range reaching past the end keeps its indices past the end, so that the
    out-of-range check names them (nothing is clipped)."""
    bounds = []
    for bound in (start, stop):
        if bound < 0:
            if bound < -size:
                return [bound]
            bound += size
        bounds.append(bound)
    if bounds[0] >= size:
        return [bounds[0]]
    return list(range(bounds[0], bounds[1], step))
