"""The one error tree of abe. Providers raise these, with the client library's error as `__cause__`.

    AbeError
    ├── ConfigurationError      (also ValueError)    from_env(): bad or missing variables
    ├── BackendNotFoundError    (also RuntimeError)  loader: unknown, ambiguous or broken backend
    ├── PayloadError            (also ValueError)    not a dict, not JSON, too large
    ├── InvalidKeyError         (also ValueError)    a key the broker cannot accept
    ├── BackendUnavailableError (also ConnectionError) broker not reachable in time
    │   └── AuthenticationError                      the broker refused the credentials
    ├── PublishError                                 some messages of a batch were refused
    ├── BackendClosedError      (also RuntimeError)  the backend was used after close()
    └── DeliveryStateError      (also RuntimeError)  a delivery was settled twice

Every message says what was wrong and what to do about it, and never contains a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AbeError",
    "AuthenticationError",
    "BackendClosedError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "ConfigurationError",
    "DeliveryStateError",
    "InvalidKeyError",
    "PayloadError",
    "PublishError",
]


class AbeError(Exception):
    """The base of every error abe raises on purpose."""


class ConfigurationError(AbeError, ValueError):
    """Environment variables are missing or malformed; `problems` maps each variable to why."""

    def __init__(self, backend: str, problems: Mapping[str, str]) -> None:
        self.backend = backend
        self.problems = dict(problems)
        lines = "\n".join(f"  {name}: {reason}" for name, reason in self.problems.items())
        count = len(self.problems)
        noun = "variable" if count == 1 else "variables"
        super().__init__(
            f"the {backend} backend is not configured correctly ({count} {noun}):\n{lines}"
        )

    @property
    def variables(self) -> tuple[str, ...]:
        """The names of the variables that need fixing, in the order they were checked."""
        return tuple(self.problems)


class BackendNotFoundError(AbeError, RuntimeError):
    """The loader cannot give the backend asked for: unknown, ambiguous, or failing to load."""


class PayloadError(AbeError, ValueError):
    """A payload abe refuses before any network I/O: not a dict, not JSON, or too large."""


class InvalidKeyError(AbeError, ValueError):
    """A routing key the broker cannot accept; the message names the broker's rule."""


class BackendUnavailableError(AbeError, ConnectionError):
    """The broker could not be reached, or did not answer, within the configured time."""


class AuthenticationError(BackendUnavailableError):
    """The broker refused the credentials it was given (which the message never repeats)."""


class PublishError(AbeError):
    """Part of a batch was refused by the broker; `failed` maps each refused index to why.

    The entries not named in `failed` were published. Retrying only the failed ones
    publishes each message once.
    """

    def __init__(self, key: str, failed: Mapping[int, str], total: int) -> None:
        self.key = key
        self.failed = dict(failed)
        self.total = total
        shown = ", ".join(f"#{index}: {reason}" for index, reason in list(self.failed.items())[:5])
        more = "" if len(self.failed) <= 5 else f", and {len(self.failed) - 5} more"
        super().__init__(
            f"{len(self.failed)} of {total} messages to {key!r} were not published "
            f"({shown}{more}); the others were. Retry the failed ones."
        )


class BackendClosedError(AbeError, RuntimeError):
    """The backend was used after `close()`; build a new one with `load_backend()`."""


class DeliveryStateError(AbeError, RuntimeError):
    """A delivery was acknowledged, nacked or dead-lettered after it was already settled."""
