"""Keeping credentials out of botocore's DEBUG log records.

At DEBUG, botocore logs each request it sends (`botocore.endpoint`: every header, the
session token's `X-Amz-Security-Token` and the access key id in `Authorization`
included) and the canonical request it signs (`botocore.auth`). A filter on botocore's
and aiobotocore's loggers rewrites such records before any handler sees them: the
credentials this process was given are replaced by '***', and so are session tokens
and access key ids that came from elsewhere in the credential chain (by their header
pattern). The secret access key itself is never logged by botocore: it only signs.
"""

from __future__ import annotations

import logging

from abe_mq_sqs._errors import redact

__all__ = ["protect_client_logs"]

_LOGGERS = (
    "botocore",
    "botocore.auth",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.retries.standard",
    "aiobotocore",
    "aiobotocore.endpoint",
    "aiobotocore.httpsession",
)


class _Redactor(logging.Filter):
    """Rewrites a record whose message holds a credential; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: leave it to the handler
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_REDACTOR = _Redactor()


def protect_client_logs() -> None:
    """Put the filter on botocore's and aiobotocore's loggers (idempotent; loggers only filter
    the records they create, so each one that exists gets it)."""
    names = set(_LOGGERS)
    names.update(
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith(("botocore.", "aiobotocore."))
    )
    for name in names:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)
