"""Object matching: the normalisation (accents, case, punctuation, spaces) and whole-word matches."""

from __future__ import annotations

from patchscopes.data.matching import mentions, normalize_text
from patchscopes.data.relation_loaders import unescape


def test_object_match_normalisation():
    assert normalize_text("  Bogotá,\n D.C.  ") == "bogota d c"
    assert unescape("Bogot\\u00e1") == "Bogotá"
    assert mentions(" is the US DOLLAR.", "Dollar")            # case
    assert mentions(" is the US dollars", "Dollar")            # plural
    assert mentions("in  Mexico\nCity", "Mexico City")         # whitespace runs
    assert mentions("Bogota, the capital", "Bogotá")           # accents
    assert mentions("the Polish zloty", "złoty")               # letters with strokes
    assert mentions("Søren Kierkegaard", "Soren Kierkegaard")
    assert normalize_text("Æsop, Œuvre, Þór, İstanbul") == "aesop oeuvre thor istanbul"
    assert mentions("Washington, D.C. is", "Washington D.C.")  # punctuation
    assert mentions("a well-known x", "well known")            # hyphens as spaces
    assert mentions("McDonalds", "McDonald's")                 # apostrophes dropped
    assert not mentions("one hundred", "red")                  # whole words only
    assert not mentions("reddish", "red")
    assert not mentions("", "red") and not mentions(None, "red")
    assert mentions("the Tokio metro", "Tokyo", aliases=["Tokio"])
    assert not mentions("anything", "", aliases=[""])
