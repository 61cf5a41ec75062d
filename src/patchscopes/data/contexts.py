"""Source contexts of a subject and the subject's position in them: the paper's windows, windows cut from a
user's corpus, or the relation's templates; then the subject's last token in the model's own tokens.

**Source contexts** of a subject come from the first of these that has any (:func:`subject_contexts`): the
TSV's WikiText windows, windows of a user's text corpus that contain the subject (:func:`corpus_windows`), or
the relation's own templates with the subject filled in (:func:`template_contexts`). The source position is
the subject's last token, found again in each context with the model's own tokenizer (:func:`locate_subject`);
the paper's GPT-J positions are never reused.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

from patchscopes.data.relation_types import AttributeSample, Relation, SourceContext
from patchscopes.data.tokens import Tokenizes
from patchscopes.errors import PatchscopesError

CONTEXT_KINDS = ("wikitext", "corpus", "template")
"""Where source contexts come from, in the default order of preference."""


def _subject_pattern(subject: str) -> str:
    """A regex for ``subject`` as whole words (word boundaries only where the subject starts or ends a word)."""
    left = r"(?<!\w)" if subject[:1].isalnum() else ""
    right = r"(?!\w)" if subject[-1:].isalnum() else ""
    return left + re.escape(subject) + right


def _occurrences(text: str, subject: str) -> list[tuple[int, int]]:
    pattern = _subject_pattern(subject)
    for flags in (0, re.I):
        spans = [m.span() for m in re.finditer(pattern, text, flags)]
        if spans:
            return spans
    return []


def locate_subject(
    model: Tokenizes, text: str, subject: str, subject_end: int | None = None
) -> tuple[list[int], int] | None:
    """The model's tokens of ``text`` and the index of the subject's last token, or ``None`` if absent.

    The subject is searched as whole words (case-sensitive, then not: ``"Japan"`` is not found in
    ``"Japanese"``); with several occurrences the one ending nearest ``subject_end`` is taken, else the first.

    Args:
        model: Its tokenizer gives the tokens and the token at a character.
        text: The context.
        subject: The subject to find.
        subject_end: The character offset where the meant occurrence ends, if known.

    Returns:
        ``(ids, position)``: the ids of ``text`` and the index of the token that holds the subject's last
        character; ``None`` if the subject does not occur (or ``text`` has no tokens).
    """
    if not subject:
        return None
    spans = _occurrences(text, subject)
    if not spans:
        return None
    if subject_end is not None:
        _, end = min(spans, key=lambda s: (abs(s[1] - subject_end), s[0]))
    else:
        _, end = spans[0]
    ids = model.encode(text)
    if not ids:
        return None
    return ids, model.token_at_char(text, ids, end - 1)


def corpus_windows(
    model: Tokenizes,
    documents: Sequence[str] | Sequence[object],
    subjects: Iterable[str],
    *,
    per_subject: int = 5,
    window_tokens: int = 20,
) -> dict[str, list[SourceContext]]:
    """Windows of about ``window_tokens`` tokens of ``documents`` that contain each subject.

    A window ends a quarter of its length after the subject (a causal model's state at the subject does not
    depend on later tokens), and its start is found with the model's tokenizer. Occurrences are whole-word,
    case-sensitive matches, taken in corpus order, at most ``per_subject`` per subject.

    Args:
        model: Its tokenizer cuts the windows.
        documents: Texts, or objects with a ``text`` attribute (:class:`~patchscopes.data.text.Document`).
        subjects: The subjects to look for.
        per_subject: The most windows per subject.
        window_tokens: The length of a window in tokens.

    Returns:
        The windows of each subject found at least once.

    Raises:
        PatchscopesError: ``window_tokens`` is below 2.
    """
    if window_tokens < 2:
        raise PatchscopesError(f"window_tokens must be at least 2, got {window_tokens}")
    texts = [d if isinstance(d, str) else d.text for d in documents]  # type: ignore[attr-defined]
    joined = "\n\n".join(texts)
    starts = []
    offset = 0
    for t in texts:
        starts.append(offset)
        offset += len(t) + 2
    out: dict[str, list[SourceContext]] = {}
    for subject in dict.fromkeys(subjects):
        if not subject:
            continue
        found: list[SourceContext] = []
        for m in re.finditer(_subject_pattern(subject), joined):
            doc = bisect.bisect_right(starts, m.start()) - 1
            doc_start = starts[doc]
            if m.end() > doc_start + len(texts[doc]):
                continue
            window = _window(model, texts[doc], m.start() - doc_start, m.end() - doc_start, window_tokens)
            if window is not None and all(w.text != window.text for w in found):
                found.append(window)
            if len(found) >= per_subject:
                break
        if found:
            out[subject] = found
    return out


def _window(model: Tokenizes, text: str, start: int, end: int, window_tokens: int) -> SourceContext | None:
    lo = max(0, start - 12 * window_tokens)
    hi = min(len(text), end + 12 * window_tokens)
    chunk = text[lo:hi]
    s, e = start - lo, end - lo
    try:
        enc = model.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = []
    if offsets:
        covering = [k for k, (a, b) in enumerate(offsets) if a < e and b > s]
        if not covering:
            return None
        first, last = covering[0], covering[-1]
        tail = window_tokens // 4
        lo_tok = min(first, max(0, last + 1 + tail - window_tokens))
        hi_tok = max(last + 1, min(len(offsets), lo_tok + window_tokens))
        a, b = offsets[lo_tok][0], offsets[hi_tok - 1][1]
    else:  # no offsets: whole words around the subject (about two tokens a word)
        before = [m.start() for m in re.finditer(r"\S+", chunk[:s])]
        after = [m.end() for m in re.finditer(r"\S+", chunk[e:])]
        n_before, n_after = max(1, 3 * window_tokens // 8), max(1, window_tokens // 8)
        a = before[-n_before] if len(before) >= n_before else (before[0] if before else s)
        b = e + (after[n_after - 1] if len(after) >= n_after else (after[-1] if after else 0))
    piece = chunk[a:b]
    if not piece.strip():
        return None
    return SourceContext(piece, "corpus", e - a)


def template_contexts(relation: Relation, subject: str) -> list[SourceContext]:
    """The relation's templates with the subject filled in (or, without templates, its verbalization).

    Args:
        relation: The relation.
        subject: The subject to fill in.

    Returns:
        One ``"template"`` context per distinct text, in template order.
    """
    texts = [t.replace("{}", subject, 1) for t in relation.prompt_templates if "{}" in t]
    if not texts:
        texts = [relation.verbalize(subject)]
    return [SourceContext(t, "template", None) for t in dict.fromkeys(texts)]


def subject_contexts(
    relation: Relation,
    *,
    corpus: dict[str, list[SourceContext]] | None = None,
    kinds: Sequence[str] = CONTEXT_KINDS,
    per_subject: int = 5,
) -> dict[str, list[SourceContext]]:
    """The source contexts of each subject: those of the first kind in ``kinds`` that has any.

    Args:
        relation: The relation.
        corpus: Corpus windows per subject (from :func:`corpus_windows`).
        kinds: Allowed kinds in order of preference: ``wikitext``, ``corpus``, ``template``.
        per_subject: The most contexts per subject.

    Returns:
        The contexts of each subject that has any, subjects in sample order.

    Raises:
        PatchscopesError: An unknown or empty ``kinds``, or ``per_subject`` below 1.
    """
    unknown = [k for k in kinds if k not in CONTEXT_KINDS]
    if unknown or not kinds:
        raise PatchscopesError(f"unknown context kind(s) {', '.join(unknown) or '(none given)'}",
                               hint=f"use some of {', '.join(CONTEXT_KINDS)}")
    if per_subject < 1:
        raise PatchscopesError(f"per_subject must be at least 1, got {per_subject}")
    out: dict[str, list[SourceContext]] = {}
    for subject in dict.fromkeys(s.subject for s in relation.samples):
        for kind in kinds:
            if kind == "wikitext":
                found = relation.windows.get(subject, [])
            elif kind == "corpus":
                found = (corpus or {}).get(subject, [])
            else:
                found = template_contexts(relation, subject)
            if found:
                out[subject] = list(found[:per_subject])
                break
    return out


def locate_samples(
    model: Tokenizes, relation: Relation, contexts: dict[str, list[SourceContext]]
) -> tuple[list[AttributeSample], int]:
    """One :class:`~patchscopes.data.relation_types.AttributeSample` per (pair, context) that has the subject.

    Args:
        model: Its tokenizer locates the subject (:func:`locate_subject`).
        relation: The relation whose (subject, object) pairs are located.
        contexts: The contexts of each subject (from :func:`subject_contexts`).

    Returns:
        The samples, and how many contexts were dropped because the subject does not occur in them.
    """
    samples: list[AttributeSample] = []
    dropped = 0
    for pair in relation.samples:
        for context in contexts.get(pair.subject, []):
            found = locate_subject(model, context.text, pair.subject, context.subject_end)
            if found is None:
                dropped += 1
                continue
            ids, position = found
            token = model.token_strings([ids[position]])[0]
            samples.append(AttributeSample(pair.subject, pair.object, pair.aliases, context.text, position, token,
                                           context.kind))
    return samples, dropped
