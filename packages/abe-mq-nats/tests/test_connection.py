"""The connection refuses to send CONNECT, which carries the credentials, without TLS."""

from __future__ import annotations

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from abe.errors import BackendUnavailableError
from abe.settings import Secret
from abe_mq_nats import NatsBackend, NatsSettings
from abe_mq_nats._client import JetStream, _TlsOnlyClient


def test_connect_is_never_built_on_a_connection_that_is_not_encrypted() -> None:
    assert "_connect_command" in vars(NatsClient), "nats-py renamed what builds CONNECT"
    with pytest.raises(nats.errors.SecureConnWantedError):
        _TlsOnlyClient()._connect_command()  # no transport yet: certainly not encrypted


def test_tls_not_offered_is_reported_as_nats_said_it() -> None:
    """The error map (not the connection) words it: test_errors holds the wording."""
    backend = NatsBackend(NatsSettings(servers=("tls://broker:4222",)))
    jetstream: JetStream = backend._jetstream
    jetstream._last_error = nats.errors.SecureConnWantedError()
    refused = jetstream._unavailable("could not be opened")
    assert isinstance(refused, nats.errors.SecureConnWantedError)
    text = str(backend._translate_error(refused))  # type: ignore[arg-type]
    assert "TLS was asked for" in text
    assert "tls://broker:4222" in text


def test_an_unreachable_server_names_the_last_error_without_secrets() -> None:
    settings = NatsSettings(servers=("nats://broker:4222",), token=Secret("s3cret-t0ken"))
    jetstream = NatsBackend(settings)._jetstream
    jetstream._last_error = ConnectionRefusedError(111, "refused s3cret-t0ken")
    unavailable = jetstream._unavailable("could not be opened within 1.0s")
    assert isinstance(unavailable, BackendUnavailableError)
    text = str(unavailable)
    assert "nats://broker:4222 could not be opened within 1.0s" in text
    assert "ConnectionRefusedError" in text
    assert "s3cret" not in text
    assert unavailable.__cause__ is jetstream._last_error
