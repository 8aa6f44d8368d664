"""One table per client library: its exception classes to abe's errors, with a hint for each.

A provider lists its client's exception classes once, each with what it means for an abe
user; a class not listed takes the entry of its nearest listed base class (along the
MRO), and one class covering several cases can list several entries told apart by a
`when` test. `translate()` builds the abe error with a message that says what went wrong
and what to do, scrubbed of secrets, the client's exception chained as its cause.

    ERRORS = ErrorMap("kafka", {
        errors.MessageSizeTooLargeError: payload("lower ABE_KAFKA_MAX_PAYLOAD_BYTES"),
        errors.SaslAuthenticationFailed: auth("check KAFKA_SASL_USERNAME/PASSWORD"),
        errors.KafkaError: unavailable("check KAFKA_BOOTSTRAP_SERVERS"),
        errors.IllegalStateError: passthrough(),   # a bug if abe ever causes it
    })

`abe.testing.assert_error_map_covers(ERRORS, client_module)` fails when a class of the
client library has no entry, so a new client release cannot slip an error past the map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = [
    "ErrorMap",
    "ErrorRule",
    "auth",
    "config",
    "invalid_key",
    "passthrough",
    "payload",
    "unavailable",
]


@dataclass(frozen=True)
class ErrorRule:
    """What one client exception becomes: an abe error class (None: raised unchanged) and a hint.

    `variable` names the setting to fix, for ConfigurationError; `when` picks this rule
    among several for one class (it is given the exception).
    """

    error: type[AbeError] | None
    hint: str = ""
    variable: str | None = None
    when: Callable[[BaseException], bool] | None = None


def unavailable(hint: str, *, when: Callable[[BaseException], bool] | None = None) -> ErrorRule:
    """The broker is away, busy or failed the request: BackendUnavailableError."""
    return ErrorRule(BackendUnavailableError, hint, when=when)


def auth(hint: str, *, when: Callable[[BaseException], bool] | None = None) -> ErrorRule:
    """The broker refused the credentials or their permissions: AuthenticationError."""
    return ErrorRule(AuthenticationError, hint, when=when)


def payload(hint: str, *, when: Callable[[BaseException], bool] | None = None) -> ErrorRule:
    """The broker refused the message (its size, its form): PayloadError."""
    return ErrorRule(PayloadError, hint, when=when)


def invalid_key(hint: str, *, when: Callable[[BaseException], bool] | None = None) -> ErrorRule:
    """The broker refused the key: InvalidKeyError."""
    return ErrorRule(InvalidKeyError, hint, when=when)


def config(
    variable: str, hint: str, *, when: Callable[[BaseException], bool] | None = None
) -> ErrorRule:
    """The broker refused a setting (partitions, replicas...): ConfigurationError for `variable`."""
    return ErrorRule(ConfigurationError, hint, variable=variable, when=when)


def passthrough(*, when: Callable[[BaseException], bool] | None = None) -> ErrorRule:
    """A misuse of the client abe must never cause: raised unchanged, it is a bug to report."""
    return ErrorRule(None, when=when)


class ErrorMap:
    """Client exception classes to abe errors, looked up along the class hierarchy."""

    def __init__(
        self,
        backend: str,
        rules: Mapping[type[BaseException], ErrorRule | Sequence[ErrorRule]],
    ) -> None:
        self.backend = backend
        self._rules = {
            klass: (entry,) if isinstance(entry, ErrorRule) else tuple(entry)
            for klass, entry in rules.items()
        }

    @property
    def classes(self) -> frozenset[type[BaseException]]:
        """The exception classes listed in the table."""
        return frozenset(self._rules)

    def covers(self, klass: type[BaseException]) -> bool:
        """Whether `klass` or one of its bases is listed."""
        return any(base in self._rules for base in klass.__mro__)

    def rule_for(self, error: BaseException) -> ErrorRule | None:
        """The rule of the nearest listed class whose `when` (if any) accepts the error."""
        for klass in type(error).__mro__:
            for rule in self._rules.get(klass, ()):
                if rule.when is None or rule.when(error):
                    return rule
        return None

    def translate(
        self,
        error: BaseException,
        where: str = "",
        *,
        scrub: Callable[[str], str] = str,
    ) -> BaseException:
        """The abe error for `error` (with `error` as its cause), or `error` itself.

        `where` says which broker was involved (never with credentials); `scrub` removes
        secrets from the client's text.
        """
        if isinstance(error, AbeError):
            return error
        rule = self.rule_for(error)
        if rule is None or rule.error is None:
            return error
        text = scrub(describe(error))
        place = f" ({where})" if where else ""
        if rule.error is ConfigurationError:
            problem = (
                f"the broker{place} refused it ({text}){'; ' + rule.hint if rule.hint else ''}"
            )
            translated: AbeError = ConfigurationError(self.backend, {rule.variable or "?": problem})
        else:
            hint = f"; {rule.hint}" if rule.hint else ""
            translated = rule.error(f"{self.backend}{place}: {text}{hint}")
        translated.__cause__ = error
        return translated

    def missing(self, classes: Iterable[type[BaseException]]) -> list[type[BaseException]]:
        """Those of `classes` that neither they nor any base of theirs is listed for."""
        return sorted((klass for klass in classes if not self.covers(klass)), key=str)


def describe(error: BaseException) -> str:
    """`Type: message` on one line, without the class name said twice."""
    name = type(error).__name__
    text = " ".join(str(error).split())
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    return f"{name}: {text}" if text else name
