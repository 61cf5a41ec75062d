"""Parsing the layer and position specifications of the command line and of :func:`patchscopes.sweep`.

A SPEC is ``all``, a comma-separated list ``0,3,5``, a range ``2:10`` (Python's convention: 2 to 9; a
step is allowed, ``0:30:5``), or any mix ``0,4:8,-1``. Negative numbers count from the end. In Python,
an int or a list of ints works too.

The grammar (spaces are allowed around ``,`` and ``:``, never inside a number)::

    spec   := "all" | part ("," part)*
    part   := number | [number] ":" [number] [":" [number]]
    number := ["-"] digit+          digit := one of the ASCII digits 0-9

Nothing else is a number: ``1 2``, ``1_0``, ``+3``, ``1.5`` and digits of other scripts (fullwidth ``３``,
Arabic-Indic ``٣``) are refused, the latter with the ASCII number they stand for in the hint.

One rule for every index, single or in a range: an index past the end (or before the start) is an error,
never cut off. ``0:40`` on a 30-layer model fails, naming the range typed and the valid one; ``0:30``, ``:``
and ``5:`` reach exactly to the end. A range is checked on its bounds and clipped to the dimension's size
before it is expanded, so ``0:10000000000000`` is refused at once and no spec builds more than ``size``
indices. A spec, or a part of one, that selects nothing (``10:2``, ``''``) is an error too.

:func:`check_spec` checks the syntax alone (before a model is loaded, where the size is not yet known);
:func:`format_spec` writes indices back in the canonical, shortest form (``0:5,7``), which
:func:`parse_spec` reads back to the same indices.
"""

from __future__ import annotations

import operator
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from patchscopes.errors import PatchscopesError

Spec = str | int | Sequence[int] | None

SYNTAX_HINT = "use 'all', a list like '0,3,5', a range like '2:10' (2 to 9), or a mix"
MAX_DIGITS = 30
"""Numbers longer than this are refused as out of range without being converted (no dimension is that big)."""


@dataclass(frozen=True)
class _Range:
    """One ``start:stop:step`` part as typed (``None``: the bound was left out)."""

    start: int | None
    stop: int | None
    step: int
    text: str


def parse_spec(spec: Spec, size: int, *, what: str = "layer") -> list[int]:
    """Resolve ``spec`` against a dimension of ``size`` items into sorted, unique, non-negative indices.

    Args:
        spec: The specification (``None`` means ``all``).
        size: The number of items (layers, or tokens of a prompt).
        what: The name used in error messages.

    Returns:
        At most ``size`` indices in ``0..size - 1``.

    Raises:
        PatchscopesError: The spec is malformed, names an index or range out of range, or selects nothing.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(size))
    if isinstance(spec, bool):
        raise PatchscopesError(f"invalid {what} spec {spec!r}", hint=SYNTAX_HINT)
    if isinstance(spec, str):
        parts = _parse(spec, what)
    elif isinstance(spec, int):
        parts = [spec]
    else:
        try:
            parts = [_as_index(i) for i in spec]
        except TypeError:
            raise PatchscopesError(
                f"invalid {what} spec {spec!r}",
                hint=f"give {what}s as integers, a list of integers, or a string like '0,3,5' or '2:10'",
            ) from None
    out: set[int] = set()
    for part in parts:
        if isinstance(part, _Range):
            indices = _range_indices(part, size, what, spec)
            if not indices:
                raise _selects_nothing(spec, part, size, what)
            out.update(indices)
        else:
            _check_index(part, size, what)
            out.add(part % size)
    if not out:
        raise _selects_nothing(spec, None, size, what)
    return sorted(out)


def check_spec(spec: Spec, *, what: str = "layer") -> None:
    """Check the syntax of ``spec`` without resolving it (the dimension's size is not needed).

    Raises:
        PatchscopesError: The spec is malformed (out-of-range indices are only found by :func:`parse_spec`).
    """
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        return
    if isinstance(spec, str):
        if spec.strip().lower() != "all":
            _parse(spec, what)
        return
    parse_spec(spec, 1 << 62, what=what)  # a sequence: its items must be integers


def parse_indices(text: str, *, what: str = "position") -> tuple[int, ...]:
    """A comma-separated list of numbers of the grammar (``0,-1``), not resolved against a size (no ranges).

    Raises:
        PatchscopesError: A malformed number, a range, or no number at all.
    """
    hint = "give numbers separated by ',', e.g. 0,-1"
    try:
        parts = _parse(text, what)
    except PatchscopesError as err:
        raise PatchscopesError(err.message, hint=hint) from None
    if not parts or any(isinstance(part, _Range) for part in parts):
        raise PatchscopesError(f"invalid {what} list {text!r}" + (": a range is not allowed here" if parts else ""),
                               hint=hint)
    return tuple(int(part) for part in parts)  # type: ignore[arg-type] (no _Range left)


def looks_numeric(text: str) -> bool:
    """Whether ``text`` is made of digits (of any script), signs, colons, commas and spaces only: what a
    spec is written with, so that a typo in one (``0-5``, ``３``) is never read as a substring of a prompt."""
    return bool(text.strip()) and all(c.isdigit() or c in "+-:,_. " for c in text)


def format_spec(indices: Sequence[int]) -> str:
    """The canonical form of ``indices`` (non-negative): sorted, each run of 3 or more consecutive indices
    written as a range (``[0, 1, 2, 3, 5, 7]`` → ``'0:4,5,7'``). :func:`parse_spec` reads it back to the same
    indices.

    Raises:
        PatchscopesError: ``indices`` is empty or holds a negative index.
    """
    values = sorted({_as_index(i) for i in indices})
    if not values or values[0] < 0:
        raise PatchscopesError(f"cannot write {list(indices)!r} as a spec", hint="give non-negative indices")
    parts, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None]):
        if cur is None or cur != prev + 1:
            parts.append(f"{start}:{prev + 1}" if prev - start >= 2
                         else ",".join(str(i) for i in range(start, prev + 1)))
            start = cur
    return ",".join(parts)


def _parse(spec: str, what: str) -> list[int | _Range]:
    """The parts of a spec string: numbers and ranges as typed, nothing resolved."""
    parts: list[int | _Range] = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            continue
        bounds = text.split(":")
        if len(bounds) > 3:
            raise _invalid(spec, what, f"'{text}' has {len(bounds) - 1} colons; a range has one or two")
        if len(bounds) == 1:
            parts.append(_number(bounds[0], spec, what, allow_empty=False))  # type: ignore[arg-type]
            continue
        start, stop = (_number(b, spec, what) for b in bounds[:2])
        step = _number(bounds[2], spec, what) if len(bounds) == 3 else None
        if step is not None and step <= 0:
            raise _invalid(spec, what, f"the step of '{text}' must be a positive number, got {step}")
        parts.append(_Range(start, stop, 1 if step is None else step, text))
    return parts


def _number(text: str, spec: str, what: str, *, allow_empty: bool = True) -> int | None:
    """One number of the grammar (``None`` for an empty, left-out bound)."""
    body = text.strip()
    if not body:
        if allow_empty:
            return None
        raise _invalid(spec, what)
    digits = body[1:] if body.startswith("-") else body
    if digits and digits.isascii() and digits.isdigit():
        if len(digits) > MAX_DIGITS:
            raise PatchscopesError(
                f"the {what} spec {spec!r} has a number of {len(digits)} digits, {body[:12]}..., far out of range",
                hint=f"give {what}s as small numbers, counted from 0 (negatives from the end)")
        return int(body)
    if any(c.isdigit() and not c.isascii() for c in body):
        ascii_form = "".join(str(unicodedata.digit(c)) if c.isdigit() and not c.isascii() else c for c in spec)
        raise PatchscopesError(
            f"invalid {what} spec {spec!r}: {body!r} is written with digits that are not ASCII",
            hint=f"type numbers with the digits 0-9: {ascii_form!r}")
    if any(c.isspace() for c in body):
        raise _invalid(spec, what, f"{body!r} has a space inside a number; separate numbers with ','")
    if "_" in body:
        raise _invalid(spec, what, f"{body!r} has a '_' inside a number; write it without")
    raise _invalid(spec, what)


def _invalid(spec: str, what: str, why: str | None = None) -> PatchscopesError:
    return PatchscopesError(f"invalid {what} spec {spec!r}" + (f": {why}" if why else ""), hint=SYNTAX_HINT)


def _check_index(index: int, size: int, what: str) -> None:
    if not -size <= index < size:
        raise PatchscopesError(
            f"{what} {index} is out of range: there are {size} {what}s",
            hint=_valid_hint(size, what),
        )


def _valid_hint(size: int, what: str) -> str:
    if size <= 0:
        return f"there is no {what} to choose"
    return f"use {what}s 0..{size - 1} (or -1..-{size} from the end)"


def _range_indices(part: _Range, size: int, what: str, spec: Spec) -> range:
    """The indices of one range part, its bounds checked before anything is expanded: a bound before the
    start, a start at or past the end, or a range whose indices reach past the end is refused (never clipped).
    The range returned is clipped to ``size``, so it never holds more than ``size`` indices."""
    start = 0 if part.start is None else part.start
    stop = size if part.stop is None else part.stop
    for bound, name in ((part.start, "start"), (part.stop, "end")):
        if bound is not None and bound < -size:
            raise _range_error(part, spec, size, what, f"has its {name} {bound} before the first {what}")
    start = start + size if start < 0 else start
    stop = stop + size if stop < 0 else stop
    if start >= size:
        raise _range_error(part, spec, size, what, f"starts at {what} {start}, past the last one")
    if stop > size:
        # The first index at or past the end: start + ceil((size - start) / step) * step; refused if inside.
        first_past = start + -(-(size - start) // part.step) * part.step
        if first_past < stop:
            raise _range_error(part, spec, size, what, f"goes past the last {what}")
    return range(start, min(stop, size), part.step)


def _range_error(part: _Range, spec: Spec, size: int, what: str, why: str) -> PatchscopesError:
    within = "" if part.text == spec else f" in the {what} spec {spec!r}"
    if size <= 0:
        return PatchscopesError(f"the {what} range {part.text!r}{within} {why}: there are no {what}s",
                                hint=_valid_hint(size, what))
    return PatchscopesError(
        f"the {what} range {part.text!r}{within} {why}: there are {size} {what}s, 0..{size - 1}",
        hint=f"use a range inside 0:{size} (an open end, as in '0:' or ':', reaches the last {what}), or counted "
             f"from the end, as in '-{size}:'",
    )


def _selects_nothing(spec: Spec, part: _Range | None, size: int, what: str) -> PatchscopesError:
    if part is None:
        return PatchscopesError(f"the {what} spec {spec!r} selects nothing",
                                hint=f"{SYNTAX_HINT}; 'all' selects every {what}")
    within = "" if part.text == spec else f" in the {what} spec {spec!r}"
    return PatchscopesError(
        f"the {what} range {part.text!r}{within} selects nothing",
        hint=f"a range start:stop runs from start up to stop - 1 (negatives count from the end of the {size} "
             f"{what}s): put the earlier {what} first, e.g. '2:10', or '-5:' for the last five",
    )


def _as_index(item: object) -> int:
    """An integer index (Python or NumPy int); anything else, bools and floats included, is a TypeError."""
    if isinstance(item, bool):
        raise TypeError(item)
    return operator.index(item)
