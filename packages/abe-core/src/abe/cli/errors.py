"""Exit codes of the `abe` command, and each error said as one line.

0  success
1  the broker or the run failed (unreachable, refused, timed out, a failed verdict)
2  bad usage or bad input: arguments, a payload or key, the environment's settings
"""

from __future__ import annotations

from abe.errors import (
    BackendNotFoundError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandError", "exit_code_for", "one_line"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_BAD_INPUT = (PayloadError, InvalidKeyError, ConfigurationError, BackendNotFoundError)


class CommandError(Exception):
    """A failure a command reports as one line on stderr, with the exit code to end with."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(error: BaseException) -> int:
    """2 for input the user must change (arguments, payload, key, settings), else 1."""
    if isinstance(error, CommandError):
        return error.code
    if isinstance(error, _BAD_INPUT):
        return EXIT_USAGE
    return EXIT_FAILURE


def one_line(error: BaseException) -> str:
    """The error's message on one line; an error abe did not expect also names its type.

    Multi-line messages (a ConfigurationError lists one variable per line) are joined
    with "; ". A hint where to look is added for configuration problems.
    """
    parts = [part.strip() for part in str(error).splitlines() if part.strip()]
    text = parts[0] if parts else type(error).__name__
    if len(parts) > 1:
        text = f"{text} {'; '.join(parts[1:])}"
    if isinstance(error, ConfigurationError):
        return f"{text} (`abe backends` lists every variable and its default)"
    if isinstance(error, (CommandError, *_BAD_INPUT)) or type(error).__module__.startswith("abe."):
        return text
    if isinstance(error, (OSError, TimeoutError)):
        return f"{type(error).__name__}: {text}" if parts else text
    return f"unexpected {type(error).__name__}: {text} (rerun with --debug for the traceback)"
