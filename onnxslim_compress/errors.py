"""Exceptions that map onto the CLI's exit codes (docs/ARCHITECTURE.md "Contracts": 2 bad input, 3 gate not met, 1 internal).

Raising one of these instead of a bare ValueError lets the CLI print exactly one line and pick the
right exit code without guessing from the message.
"""

from __future__ import annotations

import errno

#: errnos meaning "the disk is full": the user's environment is at fault, not the tool (exit 2)
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class CompressError(Exception):
    """Base class; exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class BadInputError(CompressError):
    """The user's input is unusable: not ONNX, bad arguments, missing data. Exit code 2."""

    exit_code = 2


class InvalidModelError(BadInputError):
    """ONNX Runtime refused a model that onnx.checker also refuses. Exit 2 when the model is the
    user's (profile, compare); raised inside a pass it is the pass's bug (PassFailure keeps exit 1,
    and the compress job blames the input only if the input itself fails the checker)."""


class RecipeError(BadInputError):
    """A recipe or pass parameter is wrong; the message names the key."""


class AccuracyGateError(CompressError):
    """The fidelity/accuracy constraint could not be met. Exit code 3."""

    exit_code = 3


class ProviderError(CompressError):
    """A requested execution provider did not load (ORT silently falls back otherwise)."""

    exit_code = 2


def as_bad_input(e: BaseException) -> BadInputError | None:
    """The BadInputError an exception from outside our code amounts to, or None (an internal error).

    Why one place: a full disk surfaces as OSError(ENOSPC) from a pass, the workspace or onnx; the
    CLI entry points map it to exit 2 the same way."""
    if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
        where = f" ({e.filename})" if e.filename else ""
        return BadInputError(f"{e.strerror or 'No space left on device'}{where}: free some space or set TMPDIR elsewhere")
    return None


class PassFailure(CompressError):
    """A pass raised; carries which pass failed and which had already run."""

    def __init__(self, pass_name: str, done: list[str], cause: BaseException):
        self.pass_name = pass_name
        self.done = list(done)
        self.cause = cause
        ran = ", ".join(done) if done else "none"
        super().__init__(f"pass '{pass_name}' failed ({type(cause).__name__}: {cause}); passes already run: {ran}")
        if isinstance(cause, BadInputError) and not isinstance(cause, InvalidModelError):
            self.exit_code = cause.exit_code
        elif isinstance(cause, OSError) and cause.errno in NO_SPACE_ERRNOS:
            self.exit_code = 2
