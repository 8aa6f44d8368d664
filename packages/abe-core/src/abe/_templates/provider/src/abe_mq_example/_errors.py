"""The one place where the client library's exceptions become abe's.

abe-core passes every exception a hook raises (`_send`, `_open_receiver`, the
receiver's calls) through `ExampleBackend._translate_error`, which calls this, and
chains the original as `__cause__`. Map each exception class of your client library
to the most specific class of `abe.errors`; tests/test_errors.py holds the map.
"""

from __future__ import annotations

import asyncio

from abe.errors import AbeError, BackendUnavailableError

from abe_mq_example._settings import NAME, URL

__all__ = ["translate_error"]


def translate_error(error: Exception, where: str) -> Exception:
    """The abe error for `error`, raised while talking to the broker at `where`.

    `where` is the broker's address without credentials. Build messages from it and
    from what to do, never from the settings: no message may hold a token or password,
    and some client libraries put them in their own messages.
    """
    if isinstance(error, AbeError):
        return error
    # Your client library's classes go here, most specific first:
    #   refused credentials              -> abe.errors.AuthenticationError
    #   refused or lost connection       -> BackendUnavailableError
    #   its timeouts                     -> BackendUnavailableError (name the variable to raise)
    #   a topic / queue name it refuses  -> abe.errors.InvalidKeyError
    #   a message over its size limit    -> abe.errors.PayloadError
    # Anything left unmapped reaches the application unchanged.
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return BackendUnavailableError(
            f"the {NAME} broker at {where} did not answer in time; check that it is up, or "
            f"raise ABE_MQ_OPERATION_TIMEOUT if it is only slow"
        )
    if isinstance(error, (ConnectionError, OSError)):
        return BackendUnavailableError(
            f"cannot reach the {NAME} broker at {where} ({type(error).__name__}); check "
            f"{URL.name} and that the broker is up"
        )
    return error
