"""Exceptions that map onto the CLI's exit codes (DESIGN.md: 2 bad input, 3 gate not met, 1 internal).

Raising one of these instead of a bare ValueError lets the CLI print exactly one line and pick the
right exit code without guessing from the message.
"""

from __future__ import annotations


class CompressError(Exception):
    """Base class; exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class BadInputError(CompressError):
    """The user's input is unusable: not ONNX, bad arguments, missing data. Exit code 2."""

    exit_code = 2


class RecipeError(BadInputError):
    """A recipe or pass parameter is wrong; the message names the key."""


class AccuracyGateError(CompressError):
    """The fidelity/accuracy constraint could not be met. Exit code 3."""

    exit_code = 3


class ProviderError(CompressError):
    """A requested execution provider did not load (ORT silently falls back otherwise)."""

    exit_code = 2


class PassFailure(CompressError):
    """A pass raised; carries which pass failed and which had already run."""

    def __init__(self, pass_name: str, done: list[str], cause: BaseException):
        self.pass_name = pass_name
        self.done = list(done)
        self.cause = cause
        ran = ", ".join(done) if done else "none"
        super().__init__(f"pass '{pass_name}' failed ({type(cause).__name__}: {cause}); passes already run: {ran}")
        if isinstance(cause, BadInputError):
            self.exit_code = cause.exit_code
