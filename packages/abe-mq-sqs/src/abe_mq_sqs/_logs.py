"""Keeping credentials out of botocore's DEBUG log records.

At DEBUG, botocore logs each request it sends (`botocore.endpoint`: the URL and every
header, the session token's `X-Amz-Security-Token` and the access key id in
`Authorization` included) and the canonical request it signs (`botocore.auth`). Two
filters on botocore's and aiobotocore's loggers rewrite such records before any handler
sees them:

- each backend's own `abe.redaction.SecretFilter`, built from its settings' secrets (the
  keys, the session token, the endpoint's secret query options), put on when it creates
  its client and taken off when it closes;
- one pattern pass for the credentials botocore's chain found elsewhere (a profile, the
  instance metadata), which no settings name: session tokens and access key ids by their
  header patterns. It holds no secret, so it stays on.

The secret access key itself is never logged by botocore: it only signs.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit

from abe.redaction import SecretFilter, redact_url
from abe_mq_sqs._errors import redact
from abe_mq_sqs._settings import SqsSettings

__all__ = ["CLIENT_LOGGERS", "protect_client_logs", "secret_filter"]

CLIENT_LOGGERS = ("botocore", "aiobotocore", "abe.sqs")
"""Logger prefixes whose records may quote a request: the client library's, and ours (a
failed poll is logged at DEBUG with botocore's message, which quotes the endpoint)."""


def secret_filter(settings: SqsSettings) -> SecretFilter:
    """A filter hiding every secret of `settings`: keys, session token, endpoint options."""
    secrets = [
        secret.reveal()
        for secret in (settings.access_key_id, settings.secret_access_key, settings.session_token)
        if secret
    ]
    if settings.endpoint_url:
        secrets += _secret_options(settings.endpoint_url)
    return SecretFilter(secrets)


def _secret_options(url: str) -> list[str]:
    """The values of the URL's query options that `redact_url` hides (as written, and decoded)."""
    values: list[str] = []
    for option in re.split("[&;]", urlsplit(url).query):
        name, equals, value = option.partition("=")
        if equals and value and redact_url(f"?{name}=x") != f"?{name}=x":
            values += [value, unquote(value)]
    return values


class _HeaderRedactor(logging.Filter):
    """Rewrites a record whose message or traceback holds a session token or access key id
    by its header pattern; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: leave it to the handler
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_HEADERS = _HeaderRedactor()


def protect_client_logs(secrets: SecretFilter) -> None:
    """Put `secrets`, then the header pattern pass, on every logger under `CLIENT_LOGGERS`.

    Idempotent; call it again after botocore imported more modules (a logger only filters
    the records it creates itself, so each one that exists needs the filters).
    """
    secrets.install(*CLIENT_LOGGERS)
    names = set(CLIENT_LOGGERS)
    names.update(
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith(tuple(f"{prefix}." for prefix in CLIENT_LOGGERS))
    )
    for name in sorted(names):
        logger = logging.getLogger(name)
        logger.removeFilter(_HEADERS)  # last, after every backend's secrets: patterns can
        logger.addFilter(_HEADERS)  # then never cut a known secret in two
