"""The error map: each client-library exception becomes the most specific abe error.

When the backend has a client library, add a test that walks its exception classes
(e.g. every class in `yourclient.errors`) and fails on any that `translate_error`
leaves unmapped, so a new client release cannot slip one past.
"""

from __future__ import annotations

import asyncio

import pytest
from abe.errors import BackendUnavailableError, InvalidKeyError

from abe_mq_example import ExampleBackend, ExampleSettings


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
    settings = ExampleSettings(url="example://broker.internal:7001")
    backend = ExampleBackend(settings)
    translated = backend._translate_error(error)
    assert type(translated) is expected
    assert "example://broker.internal:7001" in str(translated)


def test_abe_errors_and_unknown_errors_pass_through() -> None:
    backend = ExampleBackend()
    already = InvalidKeyError("bad key")
    assert backend._translate_error(already) is already
    unknown = KeyError("not a broker error")
    assert backend._translate_error(unknown) is unknown
