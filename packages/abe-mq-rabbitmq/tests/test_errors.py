"""The error map: each client-library exception becomes the most specific abe error.

`assert_error_map_covers(RabbitmqBackend.errors, yourclient.errors)` walks your client
library's exception classes and fails on any the map leaves out, so a new client release
cannot slip one past.
"""

from __future__ import annotations

import asyncio
import builtins

import pytest
from abe.errors import BackendUnavailableError, InvalidKeyError

from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings


def test_the_map_covers_the_clients_exceptions() -> None:
    # With a client library: assert_error_map_covers(Backend.errors, yourclient.errors)
    connection_errors = [
        klass
        for klass in vars(builtins).values()
        if isinstance(klass, type) and issubclass(klass, OSError)
    ]
    assert RabbitmqBackend.errors.missing(connection_errors) == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError("refused"), BackendUnavailableError),
        (ConnectionResetError("reset"), BackendUnavailableError),
        (asyncio.TimeoutError(), BackendUnavailableError),
        (OSError("no route to host"), BackendUnavailableError),
    ],
)
def test_client_errors_become_abe_errors(error: Exception, expected: type[Exception]) -> None:
    settings = RabbitmqSettings(url="rabbitmq://broker.internal:7001")
    backend = RabbitmqBackend(settings)
    translated = backend._translate_error(error)
    assert type(translated) is expected
    assert "rabbitmq://broker.internal:7001" in str(translated)
    assert translated.__cause__ is error


def test_abe_errors_and_unknown_errors_pass_through() -> None:
    backend = RabbitmqBackend()
    already = InvalidKeyError("bad key")
    assert backend._translate_error(already) is already
    unknown = KeyError("not a broker error")
    assert backend._translate_error(unknown) is unknown
