"""Errors raised by patchscopes.

Every error a user can cause derives from :class:`PatchscopesError`. Its message says what was wrong and,
where possible, how to fix it; the command line prints it without a traceback and exits with status 2.

As the one module every tier may import, it also holds the checks of user input they share: :func:`check_text`
(a prompt that is not valid Unicode text), :func:`read_text_file` (a file that is not UTF-8, named with the
byte offset), :func:`check_integer` and :func:`check_real` (a whole number, a finite number).
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path


class PatchscopesError(ValueError):
    """A problem with the user's input or environment, with a hint on how to fix it.

    Args:
        message: What was wrong.
        hint: What to change; appended to the message on its own line.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ModelNotInstalledError(PatchscopesError):
    """An embedded model's package is not installed."""


class UnknownArchitectureError(PatchscopesError):
    """A model whose layout patchscopes does not know."""


# -- user text: the two checks every tier shares ----------------------------------------------------------------
def printable(text: str) -> str:
    """``text`` safe to print anywhere: a byte that was not UTF-8 (kept by Python as a surrogate escape,
    ``surrogateescape``) shown as ``\\xE9``, a lone surrogate as ``\\ud800``."""
    return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "backslashreplace").decode(
        "utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    return all(0xDC80 <= ord(c) <= 0xDCFF for c in text if 0xD800 <= ord(c) <= 0xDFFF)


def check_text(text: str, what: str = "prompt") -> str:
    """Return ``text`` if it is valid Unicode text: a prompt given on the command line with bytes that are not
    UTF-8 (Python keeps them as lone surrogates, ``surrogateescape``), or a string with a lone surrogate such
    as ``'\\ud800'``, cannot be tokenized.

    Args:
        text: The text.
        what: What it is, for the message (``"prompt"``, ``"target prompt"``).

    Raises:
        PatchscopesError: ``text`` holds a surrogate code point, naming where.
    """
    if not isinstance(text, str):
        return text  # not text at all: the caller's own check names it
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        shown = printable(text if len(text) <= 60 else text[:57] + "...")
        if 0xDC80 <= ord(bad) <= 0xDCFF:
            raise PatchscopesError(
                f"the {what} '{shown}' has a byte that is not UTF-8 (0x{ord(bad) - 0xDC00:02X}, at character "
                f"{err.start})", hint="give the text in UTF-8 (check the terminal's or the shell script's encoding, "
                "e.g. LANG=C.UTF-8)") from None
        raise PatchscopesError(
            f"the {what} '{shown}' holds a lone surrogate {bad!r} at character {err.start}, which is not text",
            hint="give valid Unicode text: a character outside the BMP is one code point ('\\U0001F600'), not a "
                 "surrogate pair") from None
    return text


def read_text_file(path: str | os.PathLike, what: str = "the file") -> str:
    """The text of ``path``, read as UTF-8 (a byte-order mark is skipped).

    Args:
        path: The file.
        what: What the file is, for the message (``"the text file"``).

    Raises:
        PatchscopesError: The file cannot be read, or is not UTF-8: the message names the file, the byte offset
            and the line of the first byte that is not.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PatchscopesError(f"could not read {what} {printable(str(path))}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        raise PatchscopesError(
            f"{what} {printable(str(path))} is not UTF-8 text: byte {start} (0x{data[start]:02X}, line {line}) "
            f"{err.reason}", hint="save it as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > fixed.txt") from None


# -- numbers ----------------------------------------------------------------------------------------------------
def check_integer(value: object, name: str, hint: str | None = None) -> None:
    """Refuse a value that is not a whole number (bools and floats included); ``name`` names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PatchscopesError(f"{name} must be a whole number, got {value!r}", hint=hint)


def check_real(value: object, name: str) -> None:
    """Refuse a value that is not a finite real number; ``name`` names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise PatchscopesError(f"{name} must be a finite number, got {value!r}")
