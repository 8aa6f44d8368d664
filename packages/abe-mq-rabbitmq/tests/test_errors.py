"""The error map: each aio-pika / aiormq exception becomes the most specific abe error."""

from __future__ import annotations

import asyncio

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.commands
import pytest
from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    InvalidKeyError,
    PayloadError,
)
from abe.testing import assert_error_map_covers

from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings

SECRET = "S3cret-In-The-Url"
_NACK = pamqp.commands.Basic.Nack(delivery_tag=1)


def test_the_map_covers_the_clients_exceptions() -> None:
    assert_error_map_covers(RabbitmqBackend.errors, aio_pika.exceptions)
    assert_error_map_covers(RabbitmqBackend.errors, aiormq.exceptions)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError("refused"), BackendUnavailableError),
        (aiormq.exceptions.AMQPConnectionError("connect failed"), BackendUnavailableError),
        (aiormq.exceptions.ProbableAuthenticationError("closed at login"), AuthenticationError),
        (aiormq.exceptions.AuthenticationError("ACCESS_REFUSED"), AuthenticationError),
        (aiormq.exceptions.ConnectionNotAllowed("vhost not found"), AuthenticationError),
        (aiormq.exceptions.ChannelAccessRefused("amq.x"), AuthenticationError),
        (aiormq.exceptions.ChannelPreconditionFailed("inequivalent arg"), InvalidKeyError),
        (aiormq.exceptions.ChannelNotFoundEntity("home node down"), BackendUnavailableError),
        (aiormq.exceptions.ConnectionClosed(320, "shutdown"), BackendUnavailableError),
        (aio_pika.exceptions.DeliveryError(None, _NACK), PayloadError),
        (aiormq.exceptions.ChannelInvalidStateError("closed"), BackendUnavailableError),
        (asyncio.TimeoutError(), BackendUnavailableError),
    ],
)
def test_client_errors_become_abe_errors(error: Exception, expected: type[Exception]) -> None:
    settings = RabbitmqSettings(url=f"amqp://app:{SECRET}@broker.internal:5672/")
    backend = RabbitmqBackend(settings)
    translated = backend._translate_error(error)
    assert type(translated) is expected
    assert "amqp://***@broker.internal:5672/" in str(translated)
    assert SECRET not in str(translated)
    assert translated.__cause__ is error


def test_abe_errors_and_unknown_errors_pass_through() -> None:
    backend = RabbitmqBackend()
    already = InvalidKeyError("bad key")
    assert backend._translate_error(already) is already
    unknown = KeyError("not a broker error")
    assert backend._translate_error(unknown) is unknown


def test_a_missing_vhost_and_a_tls_mismatch_say_what_to_check() -> None:
    backend = RabbitmqBackend()
    closed = aiormq.exceptions.InvalidFrameError("Expected Connection.OpenOk, got Connection.Close")
    vhost = backend._translate_error(closed)
    assert type(vhost) is AuthenticationError
    assert "virtual host in RABBITMQ_URL" in str(vhost)
    handshake = aiormq.exceptions.AMQPConnectionError(1, "[SSL: WRONG_VERSION_NUMBER]")
    tls = backend._translate_error(handshake)
    assert type(tls) is BackendUnavailableError
    assert "TLS handshake failed" in str(tls)
