"""The errors p2vimage reports to users, each with its documented exit code.

Every error a user can cause or fix is a :class:`P2VError`: one line saying what went wrong
and where, plus a hint saying what to do. ``cli.main`` prints ``error: MESSAGE (hint: HINT)``
and exits with ``exit_code``; tracebacks appear only under ``--debug``.

Exit codes (documented in README.md):
    0   success
    1   a stage failed (StageError)
    2   invalid input or usage (InputError, click usage errors)
    3   a precondition is not met: missing tool, no space, locked output (PreconditionError)
    130 interrupted (SIGINT/SIGTERM)
"""

from __future__ import annotations

from typing import Any


class P2VError(Exception):
    """Base of all user-facing errors."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.report: dict[str, Any] | None = None  # what was done before it failed (--json)

    def one_line(self) -> str:
        """The error as the single line the CLI prints (newlines folded)."""
        text = f"error: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return " ".join(text.split("\n"))


class StageError(P2VError):
    """A stage ran and failed (a tool returned an error, a check did not pass)."""

    exit_code = 1


class InputError(P2VError):
    """The user gave something p2vimage cannot use: a bad path, size, option or file."""

    exit_code = 2


class PreconditionError(P2VError):
    """The host is not ready: a tool is missing, no space is left, the output is locked."""

    exit_code = 3


class Interrupted(P2VError):
    """The run was interrupted by a signal; partial outputs were removed."""

    exit_code = 130
