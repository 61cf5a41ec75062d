"""What data code needs of a model: its tokenizer, never its weights.

Data modules take any object with these members (a :class:`~patchscopes.models.LanguageModel` has them), so
they can find subjects and cut token windows without importing or running a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Tokenizes(Protocol):
    """An object that tokenizes like a model: :class:`~patchscopes.models.LanguageModel` is one."""

    tokenizer: Any

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, with the model's special prefix."""
        ...

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id as the text of its token."""
        ...

    def token_at_char(self, prompt: str, ids: Sequence[int], char: int) -> int:
        """The index of the token of ``ids`` that covers character ``char`` of ``prompt``."""
        ...
