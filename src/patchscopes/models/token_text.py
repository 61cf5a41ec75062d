"""Tokens as a person reads them: a token that is not whole UTF-8 on its own is shown by its bytes.

Byte-level tokenizers (GPT-2's, SmolLM2's) and SentencePiece's byte fallback (Llama's, Gemma's) split a
character such as ``東`` or an emoji over several tokens. Decoded alone, each such token is ``"�"``, and no two
can be told apart. :func:`readable_token` shows the bytes that are not a whole character as ``<0xE6>``, around
the characters that are whole: ``東`` in SmolLM2 is ``<0xE6><0x9D>``, ``<0xB1>``; ``␣❤`` begins ``␣<0xE2>``.
"""

from __future__ import annotations

import codecs
import functools
import re

_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_HEX_ERRORS = "patchscopes-hex-bytes"


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start: err.end]), err.end


codecs.register_error(_HEX_ERRORS, _hex_bytes)


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte (transformers' ``bytes_to_unicode``), inverted."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes of one token: from a SentencePiece byte piece (``<0xE6>``) or a byte-level BPE piece
    (``æĿ``); ``None`` for a tokenizer of another kind."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    match = _SENTENCEPIECE_BYTE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    alphabet = _byte_level_alphabet()
    if all(ch in alphabet for ch in piece):
        return bytes(alphabet[ch] for ch in piece)
    return None


def readable_token(tokenizer, token_id: int, text: str) -> str:
    """``text``, the token decoded on its own, or where it holds a replacement character ``"�"`` (a token that
    is part of a character), the token's bytes: whole characters as text, the others as ``<0xE6>``.

    Args:
        tokenizer: The model's tokenizer.
        token_id: The token.
        text: ``tokenizer.decode([token_id])``.

    Returns:
        For example ``"<0xE6><0x9D>"`` for the first token of ``東`` in SmolLM2, ``"<0xF0>"`` for a byte
        token of Gemma's; ``text`` itself when it is whole. Where the bytes cannot be read from the tokenizer,
        ``text`` followed by ``#`` and the id, so that two such tokens still differ.

    Example:
        >>> readable_token(tokenizer, 30679, "\\ufffd")  # SmolLM2's token 'æĿ'
        '<0xE6><0x9D>'
    """
    if "\ufffd" not in text:
        return text
    raw = token_bytes(tokenizer, token_id)
    if raw is not None and raw.decode("utf-8", errors="replace").strip() == text.strip():
        return raw.decode("utf-8", errors=_HEX_ERRORS)
    return f"{text}#{int(token_id)}"
