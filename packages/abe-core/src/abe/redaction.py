"""Keeping secrets out of text: URLs for display, and every log record of a client library.

`redact_url` hides the secret parts of a URL (user info, and query options such as
`password=` or `ssl_password=`), keeping the rest readable. `SecretFilter` is a logging
filter that replaces the secrets it was given, in every form a library might print them
(as is, percent-encoded, escaped inside a `repr` of str or bytes), in each record's
message and traceback; `install()` puts it on every logger of a client library, since a
logger's filters only see the records that logger itself creates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["MASK", "SecretFilter", "redact_url", "url_secrets"]

MASK = "***"

_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_.%-]*(?:pass(?:word|wd|phrase)?|pwd|token|secret|credentials?|"
    r"signature|sig|api[_-]?key|access[_-]?key|private[_-]?key|auth))=)([^&#]*)"
)
"""Query options whose value is a secret: password, ssl_password, auth_token, access_key..."""
_MIN_SECRET = 3
"""Shorter secrets are not searched for in logs: masking every 'ab' would garble them."""


def redact_url(text: str) -> str:
    """Comma-separated URLs with user names, passwords, tokens and secret options as ***.

    Only the secret parts go: `redis://***@cache:6379/0?ssl_password=***&db=2`.
    """
    parts = []
    for part in text.split(","):
        # Split at the last "@" rather than parse: a password with an unencoded "/", "?"
        # or "#" would make a URL parser put part of it in the path.
        scheme, separator, rest = part.partition("://")
        if not separator:
            scheme, rest = "", part
        if "@" in rest:
            rest = f"{MASK}@{rest.rsplit('@', 1)[1]}"
        parts.append(_SECRET_QUERY.sub(rf"\1{MASK}", f"{scheme}{separator}{rest}"))
    return ",".join(parts)


def url_secrets(text: str) -> tuple[str, ...]:
    """The secret parts of comma-separated URLs: user info and secret query option values.

    For feeding a SecretFilter with what `redact_url` hides: each as written and, where it
    differs, percent-decoded, as the client library will use (and may print) it.
    """
    found: list[str] = []
    for part in text.split(","):
        rest = part.partition("://")[2] or part
        if "@" in rest:
            userinfo = rest.rsplit("@", 1)[0]
            found += [piece for piece in userinfo.split(":", 1) if piece]
        found += [match.group(2) for match in _SECRET_QUERY.finditer(part) if match.group(2)]
    decoded = [form for piece in found for form in (unquote(piece), unquote_plus(piece))]
    return tuple(dict.fromkeys([*found, *decoded]))


def _forms(secret: str) -> set[str]:
    """The ways a library may print `secret`: as is, URL-encoded, escaped in a repr or JSON."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        json.dumps(secret)[1:-1],
    }
    return {form for form in forms if len(form) >= _MIN_SECRET}


class SecretFilter(logging.Filter):
    """Rewrites log records that contain one of `secrets`; lets every record through.

    Build one per backend from its settings' secret fields, `install()` it on the client
    library's loggers when the backend connects and `uninstall()` it when it closes.
    """

    def __init__(self, secrets: Iterable[str], patterns: Iterable[re.Pattern[str]] = ()) -> None:
        super().__init__()
        forms = {form for secret in secrets if secret for form in _forms(secret)}
        self._forms = sorted(forms, key=len, reverse=True)
        self._patterns = tuple(patterns)
        self._loggers: list[logging.Logger] = []

    @property
    def active(self) -> bool:
        """Whether there is anything to hide."""
        return bool(self._forms or self._patterns)

    def scrub(self, text: str) -> str:
        """`text` with every form of the secrets, and each pattern's last group, as ***.

        A pattern hides its last group (`Credential=(AKIA[A-Z0-9]+)`), or its whole match
        when it has none, for secrets a library finds by itself rather than from settings.
        """
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        for pattern in self._patterns:
            text = pattern.sub(_masker, text)
        return text

    def scrub_chain(self, error: BaseException) -> None:
        """Scrub the text of `error` and of every exception it came from, in place.

        An abe error carries the client's exception as its cause, so a traceback prints
        that exception's arguments too: they must not hold a secret either.
        """
        if not self.active:
            return
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            args = tuple(self.scrub(arg) if isinstance(arg, str) else arg for arg in current.args)
            if args != current.args:
                with contextlib.suppress(Exception):  # an exception type that refuses new args
                    current.args = args
            current = current.__cause__ or current.__context__

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: the handler will say so
            return True
        cleaned = self.scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True

    def install(self, *prefixes: str) -> None:
        """Filter every logger that exists under `prefixes` (`"aiokafka"`: it and its children).

        Idempotent; call it again after the library imported more modules (a connect).
        """
        if not self.active:
            return
        names = set(prefixes)
        names.update(
            name
            for name in list(logging.Logger.manager.loggerDict)
            if any(name.startswith(f"{prefix}.") for prefix in prefixes)
        )
        for name in sorted(names):
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                self._loggers.append(logger)

    def uninstall(self) -> None:
        """Take the filter off every logger it was put on."""
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()


def _masker(match: re.Match[str]) -> str:
    if not match.re.groups:
        return MASK
    group = match.re.groups
    start, end = match.span(group)
    if start < 0:
        return match.group(0)
    whole_start = match.start()
    text = match.group(0)
    return text[: start - whole_start] + MASK + text[end - whole_start :]
