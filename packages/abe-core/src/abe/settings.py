"""Reading a backend's settings from the environment: every variable checked, one error for all.

A provider declares its variables once as `Variable`s (name, default, meaning); the same
declarations feed `from_env()`, `abe backends` and the provider's README table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from abe.errors import ConfigurationError
from abe.redaction import redact_url

__all__ = [
    "COMMON_VARIABLES",
    "KEYS",
    "OPERATION_TIMEOUT",
    "PREFETCH",
    "REDELIVERY_TIMEOUT",
    "Environment",
    "Secret",
    "Variable",
    "number_text",
    "redact_url",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One environment variable a backend reads: its name, default and meaning."""

    name: str
    default: str | None
    meaning: str
    secret: bool = False


class Secret:
    """A password, token or key: shown as `'***'` in every repr and str, read with `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for handing to the client library and nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


KEYS = Variable(
    "ABE_MQ_KEYS", None, "Comma-separated keys that `consume()` reads when it is given none."
)
"""ABE_MQ_KEYS: read by `consume()` and `subscribe()` when they are given no keys."""
PREFETCH = Variable(
    "ABE_MQ_PREFETCH", "100", "Most messages a consumer holds unacknowledged at once."
)
"""ABE_MQ_PREFETCH: `BackendSettings.prefetch`."""
REDELIVERY_TIMEOUT = Variable(
    "ABE_MQ_REDELIVERY_TIMEOUT",
    "30",
    "Seconds after which a delivered but unacknowledged message is delivered again.",
)
"""ABE_MQ_REDELIVERY_TIMEOUT: `BackendSettings.redelivery_timeout`."""
OPERATION_TIMEOUT = Variable(
    "ABE_MQ_OPERATION_TIMEOUT",
    "10",
    "Seconds a publish or acknowledgement may take before BackendUnavailableError.",
)
"""ABE_MQ_OPERATION_TIMEOUT: `BackendSettings.operation_timeout`."""
COMMON_VARIABLES: tuple[Variable, ...] = (KEYS, PREFETCH, REDELIVERY_TIMEOUT, OPERATION_TIMEOUT)
"""Variables every first-party backend reads, whatever its broker."""


class Environment:
    """Reads variables and remembers every problem, so that one error can name them all.

    Call the typed readers for each variable, then `check(backend_name)`: it raises one
    `ConfigurationError` if anything was wrong. Values of secret variables never appear
    in a problem.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.problems: dict[str, str] = {}

    def raw(self, variable: Variable) -> str | None:
        """The variable's text with surrounding spaces removed, else its default."""
        value = self._environ.get(variable.name)
        if value is None or not value.strip():
            return variable.default
        return value.strip()

    def is_set(self, variable: Variable) -> bool:
        """Whether the environment gives this variable a non-empty value."""
        return bool(self._environ.get(variable.name, "").strip())

    def problem(self, variable: Variable | str, reason: str) -> None:
        """Record that a variable is wrong; the first reason recorded for it wins."""
        name = variable if isinstance(variable, str) else variable.name
        self.problems.setdefault(name, reason)

    def _shown(self, variable: Variable, text: str) -> str:
        return "" if variable.secret else f" (got {text!r})"

    def _parse(self, variable: Variable, parse: Callable[[str], T], expected: str) -> T | None:
        text = self.raw(variable)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError:
            self.problem(variable, f"must be {expected}{self._shown(variable, text)}")
            return None

    def parsed(self, variable: Variable, parse: Callable[[str], T]) -> T | None:
        """The value `parse` makes of the text; its ValueError says what the value must be.

        The error's text should read as the end of "VARIABLE ..." ("must be host:port ...")
        and never contain a secret; the value itself is added unless the variable is secret.
        """
        text = self.raw(variable)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            reason = str(exc) or "is not a valid value"
            shown = "" if variable.secret or "(got" in reason else f" (got {redact_url(text)!r})"
            self.problem(variable, f"{reason}{shown}")
            return None

    def string(self, variable: Variable, *, required: bool = False) -> str | None:
        """Text, or None when unset and without a default."""
        text = self.raw(variable)
        if text is None and required:
            self.problem(variable, "is required but not set")
        return text

    def secret(self, variable: Variable) -> Secret | None:
        """A secret value; None when unset. Never echoed in a problem."""
        text = self._environ.get(variable.name)
        return Secret(text) if text else None

    def integer(
        self, variable: Variable, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """A whole number within the bounds given."""
        bounds = _describe_bounds(minimum, maximum)
        value = self._parse(variable, int, f"a whole number{bounds}")
        if value is not None and not _within(value, minimum, maximum):
            self.problem(
                variable, f"must be a whole number{bounds}{self._shown(variable, str(value))}"
            )
            return None
        return value

    def seconds(
        self, variable: Variable, *, minimum: float | None = None, maximum: float | None = None
    ) -> float | None:
        """A duration in seconds (decimals allowed) within the bounds given."""
        bounds = _describe_bounds(minimum, maximum)
        value = self._parse(variable, float, f"a number of seconds{bounds}")
        if value is not None and (not math.isfinite(value) or not _within(value, minimum, maximum)):
            self.problem(
                variable, f"must be a number of seconds{bounds}{self._shown(variable, str(value))}"
            )
            return None
        return value

    def boolean(self, variable: Variable) -> bool | None:
        """true/false, yes/no, on/off or 1/0, in any case."""
        return self._parse(variable, _parse_bool, "true or false")

    def choice(self, variable: Variable, choices: Sequence[str]) -> str | None:
        """One of `choices`, compared without regard to case."""
        text = self.raw(variable)
        if text is None:
            return None
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
        self.problem(variable, f"must be one of {', '.join(choices)}{self._shown(variable, text)}")
        return None

    def url(
        self, variable: Variable, *, schemes: Sequence[str], required: bool = False
    ) -> str | None:
        """A URL whose scheme is one of `schemes`; credentials in it are never echoed."""
        text = self.string(variable, required=required)
        if text is None:
            return None
        for part in text.split(","):
            try:
                parsed = urlsplit(part.strip())
                _ = parsed.port  # raises ValueError for a port that is not a number
            except ValueError:
                self.problem(variable, f"is not a valid URL{_redacted(variable, part)}")
                return None
            if parsed.scheme not in schemes:
                wanted = ", ".join(f"{scheme}://" for scheme in schemes)
                self.problem(variable, f"must start with {wanted}{_redacted(variable, part)}")
                return None
        return text

    def path(self, variable: Variable) -> Path | None:
        """The path of a file that exists and can be read."""
        text = self.raw(variable)
        if text is None:
            return None
        path = Path(text).expanduser()
        if not path.is_file():
            self.problem(
                variable, f"must name a readable file that exists{self._shown(variable, text)}"
            )
            return None
        if not os.access(path, os.R_OK):
            self.problem(
                variable, f"must name a file this process can read{self._shown(variable, text)}"
            )
            return None
        return path

    def keys(self) -> tuple[str, ...] | None:
        """The comma-separated keys of `ABE_MQ_KEYS`, or None when unset."""
        text = self.raw(KEYS)
        if text is None:
            return None
        keys = tuple(part.strip() for part in text.split(",") if part.strip())
        return keys or None

    def check(self, backend: str) -> None:
        """Raise one ConfigurationError naming every problem recorded so far."""
        if self.problems:
            raise ConfigurationError(backend, self.problems)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _within(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _describe_bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {number_text(minimum)} to {number_text(maximum)}"
    if minimum is not None:
        return f" of at least {number_text(minimum)}"
    if maximum is not None:
        return f" of at most {number_text(maximum)}"
    return ""


def number_text(value: float) -> str:
    """A bound as people write it: 1073741824, 0.1, 43200 (never 1.07374e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _redacted(variable: Variable, url: str) -> str:
    """The URL for an error message, with any user name, token or password replaced by ***."""
    if variable.secret:
        return ""
    return f" (got {redact_url(url)!r})"
