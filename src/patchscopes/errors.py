"""Errors raised by patchscopes.

Every error a user can cause derives from :class:`PatchscopesError`. Its message says what was wrong and,
where possible, how to fix it; the command line prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


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
