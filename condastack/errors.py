"""User-facing errors.

Anything the user can fix (bad input, missing files, unsatisfiable specs)
raises `CondastackError`; the CLI prints its message as one paragraph and
exits 1. Anything else is a bug in condastack.
"""

from __future__ import annotations


class CondastackError(Exception):
    """An error caused by the user's input or environment (exit code 1)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n{hint}")
