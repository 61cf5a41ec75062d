"""Text matching of answers: whether a generated text names an object (or one of its aliases).

**"The object appears"** (:func:`mentions`): both texts are normalised (:func:`normalize_text`: Unicode NFKD
with accents removed, case-folded, apostrophes dropped, other punctuation, hyphens, underscores and runs of
whitespace turned into one space); the object must then occur as whole words, optionally followed by a plural
``s``/``es`` (``"dollar"`` matches ``"US dollars"``, ``"red"`` does not match ``"hundred"``). Any alias
matching counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Latin letters that Unicode decomposition leaves whole (a stroke or a ligature, not a combining accent).
_UNDECOMPOSED = str.maketrans({
    "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ħ": "h", "Ħ": "H",
    "ı": "i", "ŧ": "t", "Ŧ": "T", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "þ": "th", "Þ": "TH",
})


def normalize_text(text: str) -> str:
    """Text as compared by :func:`mentions`: accents removed, case-folded, punctuation and spaces collapsed.

    Example:
        >>> normalize_text("  Bogotá,  D.C.  ")
        'bogota d c'
        >>> normalize_text("Polish złoty, Søren")
        'polish zloty soren'
    """
    text = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSED))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = re.sub(r"['\u2019\u2018`]", "", text)
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch == "_" else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def mentions(text: str | None, obj: str, aliases: Iterable[str] = ()) -> bool:
    """Whether ``text`` names ``obj`` (or an alias) under the normalisation of :func:`normalize_text`.

    The object must occur as whole words, optionally with a plural ``s``/``es``.

    Args:
        text: The text (a generation); ``None`` or empty names nothing.
        obj: The object's name.
        aliases: Other names of the object that count as well.

    Returns:
        Whether the object or any alias occurs.

    Example:
        >>> mentions(" is the US Dollar.", "dollar"), mentions("one hundred", "red")
        (True, False)
    """
    if not text:
        return False
    haystack = normalize_text(text)
    for name in (obj, *aliases):
        needle = normalize_text(name) if name else ""
        if not needle:
            continue
        if re.search(r"(?<!\w)" + re.escape(needle) + r"(?:e?s)?(?!\w)", haystack):
            return True
    return False
