"""The connection refuses to send CONNECT, which carries the credentials, without TLS."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from abe_mq_nats import NatsSettings
from abe_mq_nats._connection import Connection, _TlsOnlyClient


def test_connect_is_never_built_on_a_connection_that_is_not_encrypted() -> None:
    assert "_connect_command" in vars(NatsClient), "nats-py renamed what builds CONNECT"
    with pytest.raises(nats.errors.SecureConnWantedError):
        _TlsOnlyClient()._connect_command()  # no transport yet: certainly not encrypted


def test_the_error_says_tls_was_not_offered_and_what_to_change() -> None:
    settings = NatsSettings(servers=("tls://broker:4222",))
    connection = Connection(settings, lambda: "tls://broker:4222")
    connection._last_error = nats.errors.SecureConnWantedError()
    text = str(connection._unavailable("could not be opened"))
    assert "TLS was asked for" in text
    assert "tls://broker:4222 did not offer it" in text
    assert "NATS_URL" in text
    assert "NATS_TLS_CA" in text
