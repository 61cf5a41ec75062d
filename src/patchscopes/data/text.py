"""Documents from plain text files, a fixed fit/eval split, and token windows to sample positions from.

A *document* is a paragraph: a block of non-empty lines between blank lines. WikiText headings such as
``" = Title = "`` or ``" = = Section = = "`` are not documents. Each document is assigned to the ``fit`` or
the ``eval`` part by a hash of its text (:func:`split_of`), so the split depends on nothing but the text: it
is the same in every run, on every machine, in whatever order or file the documents come, and a lens fitted
on the ``fit`` part never sees an ``eval`` document.

For sampling, a document is tokenized and cut into consecutive *windows* of at most ``max_tokens`` tokens
(special tokens the tokenizer adds, such as ``<bos>``, are put in front of every window). Windows with fewer
than ``min_tokens`` tokens of text are skipped and counted.

    >>> docs = read_documents(["wiki.txt"])
    >>> fit, evaluation = split_documents(docs)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from patchscopes.errors import PatchscopesError, read_text_file

DATA_DIR_ENV = "PATCHSCOPES_DATA_DIR"
# Where a user is sent when a data file is missing: the page that says how to get each experiment's data.
DATA_DOCS_HINT = ("docs/data.md says where each experiment's data set comes from and the commands that put it "
                  f"under ${DATA_DIR_ENV}")
DEFAULT_EVAL_FRACTION = 0.5
_HEADING = re.compile(r"^\s*(=\s*)+[^=].*?(\s*=)+\s*$")


@dataclass(frozen=True)
class Document:
    """One paragraph of a text file.

    Attributes:
        text: The paragraph, its lines stripped and joined by newlines.
        origin: ``file:line`` of its first line.
    """

    text: str
    origin: str = ""

    @property
    def digest(self) -> str:
        """The SHA-256 of the text, in hex: the document's identity in splits and lens configs."""
        return document_digest(self.text)


@dataclass
class Documents:
    """The documents read from some files, with counts of what was left out.

    Attributes:
        documents: The documents, in file order.
        headings: How many heading lines were dropped.
        duplicates: How many repeated paragraphs were dropped (a text is one document, however often it
            occurs, so that it cannot fall on both sides of a split).
        files: The files read.
    """

    documents: list[Document] = field(default_factory=list)
    headings: int = 0
    duplicates: int = 0
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self):
        return iter(self.documents)

    def __getitem__(self, index):
        return self.documents[index]


@dataclass(frozen=True)
class Window:
    """A run of at most ``max_tokens`` tokens of one document: the unit positions are sampled from.

    Attributes:
        ids: The token ids, with the tokenizer's special prefix (``<bos>``...) first.
        start: How many leading ids are special tokens (never sampled).
        document: The index of the document in the list that was cut.
        digest: The document's SHA-256.
    """

    ids: tuple[int, ...]
    start: int
    document: int
    digest: str

    @property
    def n_text(self) -> int:
        """How many ids are text tokens (not the special prefix)."""
        return len(self.ids) - self.start


def document_digest(text: str) -> str:
    """SHA-256 of ``text`` (UTF-8), in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_fingerprint(texts: Iterable[str]) -> str:
    """One SHA-256 over several texts, in order (each text's digest is hashed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        h.update(document_digest(text).encode("ascii"))
    return h.hexdigest()


def is_heading(line: str) -> bool:
    """Whether ``line`` is a WikiText heading such as ``" = Title = "`` or ``" = = Section = = "``."""
    return bool(_HEADING.match(line))


def resolve_text_path(path: str | Path) -> Path:
    """``path`` if it exists, else the same relative path under ``$PATCHSCOPES_DATA_DIR`` if that exists.

    Raises:
        PatchscopesError: The file is found in neither place.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and not p.is_absolute() and (Path(data_dir) / p).is_file():
        return Path(data_dir) / p
    where = f" (nor under ${DATA_DIR_ENV}={data_dir})" if data_dir and not p.is_absolute() else ""
    raise PatchscopesError(
        f"no such text file: {path}{where}",
        hint="give plain text files, one document per paragraph (paragraphs separated by blank lines); "
        f"to get WikiText-2: {DATA_DOCS_HINT}",
    )


def parse_documents(text: str, origin: str = "") -> tuple[list[Document], int]:
    """The paragraphs of ``text`` and the number of heading lines dropped.

    A heading line ends the paragraph before it and is dropped, so a heading never joins a document.
    """
    docs: list[Document] = []
    headings = 0
    block: list[str] = []
    first = 0

    def flush() -> None:
        if block:
            docs.append(Document("\n".join(block), f"{origin}:{first}" if origin else str(first)))
            block.clear()

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            flush()
        elif is_heading(line):
            flush()
            headings += 1
        else:
            if not block:
                first = number
            block.append(line)
    flush()
    return docs, headings


def read_documents(paths: str | Path | Sequence[str | Path]) -> Documents:
    """Read plain text files into documents (paragraphs), dropping headings and repeated paragraphs.

    Args:
        paths: One or more files (UTF-8). A relative path not found here is looked up under
            ``$PATCHSCOPES_DATA_DIR``.

    Raises:
        PatchscopesError: A file is missing, unreadable or holds no document.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise PatchscopesError("no text files given", hint="give one or more plain text files")
    out = Documents()
    seen: set[str] = set()
    for given in paths:
        path = resolve_text_path(given)
        text = read_text_file(path, "the text file")
        docs, headings = parse_documents(text, path.name)
        out.files.append(str(path))
        out.headings += headings
        for doc in docs:
            if doc.digest in seen:
                out.duplicates += 1
                continue
            seen.add(doc.digest)
            out.documents.append(doc)
    if not out.documents:
        raise PatchscopesError(
            f"no documents in {', '.join(out.files)}",
            hint="documents are paragraphs of text separated by blank lines; headings do not count",
        )
    return out


def split_of(text_or_digest: str, eval_fraction: float = DEFAULT_EVAL_FRACTION, *, is_digest: bool = False) -> str:
    """``"eval"`` or ``"fit"``: the part a document belongs to, from its hash alone.

    Args:
        text_or_digest: The document's text (or its SHA-256 hex digest, with ``is_digest=True``).
        eval_fraction: The expected share of documents in the ``eval`` part.
        is_digest: Whether the first argument is already a digest.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise PatchscopesError(f"the eval fraction must be between 0 and 1, got {eval_fraction}")
    digest = text_or_digest if is_digest else document_digest(text_or_digest)
    # A salt keeps this split independent of other uses of the same hash.
    u = int(hashlib.sha256(b"patchscopes-split:" + digest.encode("ascii")).hexdigest()[:15], 16) / 16**15
    return "eval" if u < eval_fraction else "fit"


def split_documents(
    documents: Documents | Sequence[Document], eval_fraction: float = DEFAULT_EVAL_FRACTION
) -> tuple[list[Document], list[Document]]:
    """``(fit, eval)``: the documents of each part (see :func:`split_of`); the parts never share a text."""
    fit, evaluation = [], []
    for doc in documents:
        (evaluation if split_of(doc.digest, eval_fraction, is_digest=True) == "eval" else fit).append(doc)
    return fit, evaluation


def special_prefix(tokenizer) -> list[int]:
    """The token ids a tokenizer puts before any text (``[<bos>]``, or ``[]``)."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    n = len(with_special) - len(plain)
    if n > 0 and with_special[n:] == plain:
        return with_special[:n]
    return []


def token_windows(
    model, documents: Sequence[Document], *, max_tokens: int = 64, min_tokens: int = 2
) -> tuple[list[Window], int]:
    """Cut each document into windows of at most ``max_tokens`` ids (special prefix included).

    Args:
        model: A :class:`~patchscopes.models.LanguageModel` (only its tokenizer is used).
        documents: The documents.
        max_tokens: The most ids in a window, the special prefix included.
        min_tokens: Windows with fewer text tokens are skipped.

    Returns:
        The windows, and how many windows were skipped as too short.
    """
    tok = model.tokenizer
    prefix = special_prefix(tok)
    room = max_tokens - len(prefix)
    if room < 1:
        raise PatchscopesError(f"max_tokens {max_tokens} leaves no room for text after {len(prefix)} special tokens")
    if min_tokens < 1:
        raise PatchscopesError(f"min_tokens must be at least 1, got {min_tokens}")
    windows: list[Window] = []
    skipped = 0
    texts = [d.text for d in documents]
    encoded = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    for index, (doc, ids) in enumerate(zip(documents, encoded)):
        if not ids:
            skipped += 1
            continue
        for start in range(0, len(ids), room):
            piece = ids[start: start + room]
            if len(piece) < min_tokens:
                skipped += 1
                continue
            windows.append(Window(tuple(prefix) + tuple(piece), len(prefix), index, doc.digest))
    return windows, skipped
