"""The one translation point: every nats-py exception class is covered by the error map."""

from __future__ import annotations

import asyncio
import ssl

import nats.aio.errors
import nats.errors
import nats.js.errors
import pytest

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    DeliveryStateError,
    InvalidKeyError,
    PayloadError,
)
from abe.settings import Secret
from abe.testing import assert_error_map_covers
from abe_mq_nats import NatsBackend, NatsSettings
from abe_mq_nats._errors import ERRORS, refused_credentials


def test_every_client_exception_is_covered() -> None:
    assert_error_map_covers(
        NatsBackend.errors, nats.errors, nats.js.errors, nats.aio.errors, at_least=50
    )


@pytest.mark.parametrize(
    "error",
    [nats.errors.BadSubscriptionError(), nats.errors.BadTimeoutError()],
    ids=lambda error: type(error).__name__,
)
def test_misuses_of_the_client_are_left_as_they_are(error: Exception) -> None:
    assert ERRORS.translate(error, "nats://h:4222") is error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (nats.errors.TimeoutError(), BackendUnavailableError),
        (nats.errors.NoServersError(), BackendUnavailableError),
        (nats.errors.ConnectionClosedError(), BackendUnavailableError),
        (nats.errors.UnexpectedEOF(), BackendUnavailableError),
        (nats.errors.AuthorizationError(), AuthenticationError),
        (nats.errors.Error("nats: 'Authorization Violation'"), AuthenticationError),
        (nats.errors.InvalidUserCredentialsError(), AuthenticationError),
        (nats.errors.SecureConnWantedError(), BackendUnavailableError),
        (nats.errors.BadSubjectError(), InvalidKeyError),
        (nats.errors.MaxPayloadError(), PayloadError),
        (nats.errors.BadHeaderError("bad name"), PayloadError),
        (nats.errors.MsgAlreadyAckdError(), DeliveryStateError),
        (nats.js.errors.NoStreamResponseError(), BackendUnavailableError),
        (nats.js.errors.FetchTimeoutError(), BackendUnavailableError),
        (nats.js.errors.ServiceUnavailableError(code=503), BackendUnavailableError),
        (nats.js.errors.NotFoundError(code=404), BackendUnavailableError),
        (
            nats.js.errors.BadRequestError(code=400, err_code=10054, description="too big"),
            PayloadError,
        ),
        (
            nats.js.errors.BadRequestError(
                code=400, err_code=10097, description="header size exceeds maximum allowed of 64k"
            ),
            PayloadError,
        ),
        (
            nats.js.errors.ServiceUnavailableError(
                code=503, err_code=10077, description="maximum messages exceeded"
            ),
            AbeError,
        ),
        (nats.js.errors.BadRequestError(code=400, err_code=1, description="no"), AbeError),
        (ConnectionRefusedError(111, "Connect call failed"), BackendUnavailableError),
        (ssl.SSLCertVerificationError("certificate verify failed"), BackendUnavailableError),
        (asyncio.TimeoutError(), BackendUnavailableError),
    ],
)
def test_translations(error: Exception, expected: type[Exception]) -> None:
    translated = ERRORS.translate(error, "nats://h:4222")
    assert type(translated) is expected
    assert "nats://h:4222" in str(translated)
    assert translated.__cause__ is error


def test_jetstream_refusals_say_why() -> None:
    full = nats.js.errors.ServiceUnavailableError(
        code=503, err_code=10077, description="maximum messages exceeded"
    )
    text = str(ERRORS.translate(full, "nats://h:4222"))
    assert "maximum messages exceeded" in text
    assert "the stream may be full" in text
    tls = str(ERRORS.translate(nats.errors.SecureConnWantedError(), "tls://broker:4222"))
    assert "TLS was asked for" in tls
    assert "did not offer it" in tls
    assert "NATS_URL" in tls
    assert "NATS_TLS_CA" in tls


def test_unrelated_errors_pass_through() -> None:
    error = KeyError("x")
    assert ERRORS.translate(error, "") is error
    already = PayloadError("x")
    assert ERRORS.translate(already, "") is already


def test_auth_detection() -> None:
    assert refused_credentials(nats.errors.Error("nats: 'Authorization Violation'"))
    assert refused_credentials(nats.errors.AuthorizationError())
    assert not refused_credentials(nats.errors.Error("nats: 'Authentication Timeout'"))
    assert not refused_credentials(OSError("Authorization Violation"))


def test_the_backend_keeps_its_secrets_out_of_error_text() -> None:
    backend = NatsBackend(NatsSettings(token=Secret("hunter2-token")))
    translated = backend._translate_error(OSError("cannot log in with hunter2-token"))
    assert isinstance(translated, BackendUnavailableError)
    assert "hunter2" not in str(translated)
    assert "nats://127.0.0.1:4222" in str(translated)
