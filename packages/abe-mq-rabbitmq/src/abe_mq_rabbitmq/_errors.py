"""The one table that turns the client library's exceptions into abe's.

abe-core passes every exception a hook raises through it (along the class hierarchy, the
cause chained, secrets scrubbed); tests/test_errors.py checks that none is missing.
"""

from __future__ import annotations

from abe.provider import ErrorMap, unavailable

__all__ = ["ERRORS"]

ERRORS = ErrorMap(
    "rabbitmq",
    {
        # Your client's classes: refused credentials -> auth("check the token"), a refused
        # name -> invalid_key(...), size -> payload(...), setting -> config(variable, ...)
        TimeoutError: unavailable("check that the broker is up, or raise ABE_MQ_OPERATION_TIMEOUT"),
        OSError: unavailable("check RABBITMQ_URL and that the broker is up"),
    },
)
