"""The one exception type that turns bad input into a dead letter."""

from __future__ import annotations

from schemas import ErrorCode


class InputError(Exception):
    """An upload that cannot be screened; carries the dead-letter error code.

    Raised anywhere between the raw record and the preprocessed tensor; the
    pipeline catches exactly this type and routes the upload to the dead-letter
    topic. Anything else is a bug or an infrastructure failure and is handled
    differently (retry, crash and replay), never silently dead-lettered.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"InputError({self.code.value}, {self.message!r})"
