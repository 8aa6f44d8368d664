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

import inspect
import re
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = [
    "CONNECTION_DROPPED",
    "TLS_HANDSHAKE",
    "TLS_HOST_MISMATCH",
    "TLS_UNTRUSTED",
    "ErrorMap",
    "ErrorRule",
    "caused_by",
    "auth",
    "config",
    "invalid_key",
    "passthrough",
    "payload",
    "unavailable",
]


Hint = str | Callable[[Any], str]
"""A hint, or a function of the backend's settings giving one (for hints that quote them)."""
Test = Callable[[BaseException], bool] | Callable[[BaseException, Any], bool]
"""Whether a rule applies: given the exception (and, if it takes two, the settings)."""


@dataclass(frozen=True)
class ErrorRule:
    """What one client exception becomes: an abe error class (None: raised unchanged) and a hint.

    `variable` names the setting to fix, for ConfigurationError; `when` picks this rule
    among several for one class (it is given the exception, and the settings if it takes
    two arguments). `hint` may be a function of the settings.
    """

    error: type[AbeError] | None
    hint: Hint = ""
    variable: str | None = None
    when: Test | None = None
    _wants_settings: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        if self.when is not None:
            # a second parameter without a default takes the settings; one with a default
            # (`lambda error, kind=kind: ...`) is a bound value, not a request for them
            required = [
                parameter
                for parameter in inspect.signature(self.when).parameters.values()
                if parameter.default is parameter.empty
                and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
            ]
            wants = len(required) > 1
            object.__setattr__(self, "_wants_settings", wants)

    def applies(self, error: BaseException, settings: Any) -> bool:
        """Whether this rule is the one for `error` (its `when` holds, or it has none)."""
        if self.when is None:
            return True
        if self._wants_settings:
            return bool(self.when(error, settings))  # type: ignore[call-arg]
        return bool(self.when(error))  # type: ignore[call-arg]

    def hint_for(self, settings: Any) -> str:
        """The hint, computed from the settings where it depends on them."""
        return self.hint if isinstance(self.hint, str) else self.hint(settings)


def unavailable(hint: Hint, *, when: Test | None = None) -> ErrorRule:
    """The broker is away, busy or failed the request: BackendUnavailableError."""
    return ErrorRule(BackendUnavailableError, hint, when=when)


def auth(hint: Hint, *, when: Test | None = None) -> ErrorRule:
    """The broker refused the credentials or their permissions: AuthenticationError."""
    return ErrorRule(AuthenticationError, hint, when=when)


def payload(hint: Hint, *, when: Test | None = None) -> ErrorRule:
    """The broker refused the message (its size, its form): PayloadError."""
    return ErrorRule(PayloadError, hint, when=when)


def invalid_key(hint: Hint, *, when: Test | None = None) -> ErrorRule:
    """The broker refused the key: InvalidKeyError."""
    return ErrorRule(InvalidKeyError, hint, when=when)


def config(variable: str, hint: Hint, *, when: Test | None = None) -> ErrorRule:
    """The broker refused a setting (partitions, replicas...): ConfigurationError for `variable`."""
    return ErrorRule(ConfigurationError, hint, variable=variable, when=when)


def passthrough(*, when: Test | None = None) -> ErrorRule:
    """A misuse of the client abe must never cause: raised unchanged, it is a bug to report."""
    return ErrorRule(None, when=when)


class ErrorMap:
    """Client exception classes to abe errors, looked up along the class hierarchy."""

    def __init__(
        self,
        backend: str,
        rules: Mapping[type[BaseException], ErrorRule | Sequence[ErrorRule]],
        *,
        tidy: Callable[[str], str] = str,
    ) -> None:
        self.backend = backend
        self.tidy = tidy  # the client's wording made readable, before secrets are scrubbed
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

    def rule_for(self, error: BaseException, settings: Any = None) -> ErrorRule | None:
        """The rule of the nearest listed class whose `when` (if any) accepts the error."""
        for klass in type(error).__mro__:
            for rule in self._rules.get(klass, ()):
                if rule.applies(error, settings):
                    return rule
        return None

    def translate(
        self,
        error: BaseException,
        where: str = "",
        *,
        scrub: Callable[[str], str] = str,
        settings: Any = None,
    ) -> BaseException:
        """The abe error for `error` (with `error` as its cause), or `error` itself.

        `where` says which broker was involved (never with credentials); `scrub` removes
        secrets from the client's text; `settings` are the backend's, for rules whose `when`
        or hint depend on them.
        """
        if isinstance(error, AbeError):
            return error
        rule = self.rule_for(error, settings)
        if rule is None or rule.error is None:
            return error
        text = scrub(self.tidy(describe(error)))
        place = f" ({where})" if where else ""
        said = rule.hint_for(settings)
        if rule.error is ConfigurationError:
            # neutral: the client library may have refused it before the broker saw it
            problem = f"{text}{place}{'; ' + said if said else ''}"
            translated: AbeError = ConfigurationError(self.backend, {rule.variable or "?": problem})
        else:
            translated = rule.error(f"{self.backend}{place}: {text}{'; ' + said if said else ''}")
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


def caused_by(
    pattern: str = "", *kinds: type[BaseException], codes: tuple[int, ...] = ()
) -> Callable[[BaseException], bool]:
    """A `when` test: the error, or one of its causes, is one of `kinds`, has an OpenSSL
    verify code in `codes`, or says `pattern` (a regular expression); TLS and connection
    failures often arrive wrapped in the client's own exception."""
    said = re.compile(pattern) if pattern else None

    def test(error: BaseException) -> bool:
        chain = [error]
        while len(chain) < 5 and (cause := chain[-1].__cause__ or chain[-1].__context__):
            chain.append(cause)
        return any(
            isinstance(item, kinds)
            or getattr(item, "verify_code", 0) in codes
            or (said is not None and said.search(str(item)) is not None)
            for item in chain
        )

    return test


TLS_HOST_MISMATCH = caused_by("(?i)(hostname|ip address) mismatch", codes=(62, 64))
"""The server's certificate is valid, but not for the host name or address connected to."""
TLS_UNTRUSTED = caused_by("CERTIFICATE_VERIFY_FAILED", ssl.SSLCertVerificationError)
"""The server's certificate is not signed by a trusted CA (or is not valid now)."""
TLS_HANDSHAKE = caused_by("SSL", ssl.SSLError)
"""The TLS handshake failed (a plain port, a client certificate the server wants...)."""
CONNECTION_DROPPED = caused_by("(?i)closed by server|reset by peer|connection lost|broken pipe")
"""The server closed the connection (it may refuse the client's TLS, or want TLS)."""
