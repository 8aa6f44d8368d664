"""SASL logins through aiokafka's real connection code: secrets out of logs, refusals named.

No broker at hand offers SASL PLAIN (Tansu 0.6 offers only SCRAM, and keeps no users in
its memory and S3 stores), so `RefusingBroker` plays the three requests of a PLAIN login
on a loopback socket: ApiVersions, SaslHandshake (PLAIN offered) and SaslAuthenticate,
answered as Kafka answers a wrong password (error 58, SaslAuthenticationFailed).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
from types import TracebackType
from typing import Any

import pytest
from aiokafka.protocol.admin import (  # type: ignore[import-untyped]
    ApiVersionResponse_v0,
    SaslAuthenticateResponse_v0,
    SaslHandShakeResponse_v1,
)

from abe.errors import AuthenticationError
from abe.redaction import SecretFilter
from abe.settings import Secret
from abe_mq_kafka import KafkaBackend, KafkaSettings

PASSWORD = "Plain-Pa55word-under-test"
KEY_PASSWORD = "key-pa55phrase-under-test"
_API_VERSIONS, _HANDSHAKE, _AUTHENTICATE = 18, 17, 36


class RefusingBroker:
    """A loopback listener that offers SASL PLAIN and refuses every password, like Kafka."""

    def __init__(self) -> None:
        self.port = 0
        self.logins = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RefusingBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                frame = await reader.readexactly(size)
                api_key, _, correlation_id = struct.unpack(">hhi", frame[:8])
                if api_key == _API_VERSIONS:
                    versions = [(_API_VERSIONS, 0, 0), (_HANDSHAKE, 0, 1), (_AUTHENTICATE, 0, 0)]
                    body = ApiVersionResponse_v0(error_code=0, api_versions=versions).encode()
                elif api_key == _HANDSHAKE:
                    body = SaslHandShakeResponse_v1(
                        error_code=0, enabled_mechanisms=["PLAIN"]
                    ).encode()
                elif api_key == _AUTHENTICATE:
                    self.logins += 1
                    body = SaslAuthenticateResponse_v0(
                        error_code=58,
                        error_message="Authentication failed: Invalid username or password",
                        sasl_auth_bytes=b"",
                    ).encode()
                else:
                    return
                writer.write(struct.pack(">ii", len(body) + 4, correlation_id) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def plain_settings(bootstrap: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "svc",
        "sasl_password": Secret(PASSWORD),
        "idempotent": False,
        "operation_timeout": 10.0,
        "request_timeout": 5.0,
    }
    values.update(overrides)
    return KafkaSettings(**values)


@pytest.fixture
def every_record(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG from every logger (root, aiokafka, aiokafka.*, kafka.*)."""
    caplog.set_level(logging.DEBUG)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.client", "kafka"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def record_text(record: logging.LogRecord) -> str:
    """A record as any handler would print it: message, traceback and stack."""
    return logging.Formatter("%(name)s %(message)s").format(record) + (record.stack_info or "")


def error_text(error: BaseException) -> str:
    """The error's message, repr and whole cause/context chain, as a traceback shows them."""
    return "".join(traceback.format_exception(error)) + repr(error)


@pytest.mark.asyncio
async def test_plain_password_never_reaches_a_log_record(
    every_record: pytest.LogCaptureFixture,
) -> None:
    """aiokafka logs `SaslAuthenticateRequest_v0(sasl_auth_bytes=b'svc\\x00svc\\x00<password>')`."""
    async with RefusingBroker() as broker:
        backend = KafkaBackend(plain_settings(broker.bootstrap))
        try:
            with pytest.raises(Exception) as failed:  # noqa: PT011 (the next test names it)
                await backend.publish("t", {"x": 1})
        finally:
            await backend.close()
    assert broker.logins >= 1
    texts = [record_text(record) for record in every_record.records]
    assert any("SaslAuthenticateRequest" in text for text in texts)  # the path was taken
    assert not [text for text in texts if PASSWORD in text]
    assert PASSWORD not in error_text(failed.value)


@pytest.mark.asyncio
async def test_a_refused_plain_login_is_an_authentication_error_naming_the_variables(
    every_record: pytest.LogCaptureFixture,
) -> None:
    async with RefusingBroker() as broker:
        backend = KafkaBackend(plain_settings(broker.bootstrap))
        try:
            with pytest.raises(AuthenticationError) as refused:
                await backend.publish("t", {"x": 1})
            with pytest.raises(AuthenticationError) as refused_subscribe:
                await backend.subscribe(group="g", keys=["t"]).open()
        finally:
            await backend.close()
    for error in (refused.value, refused_subscribe.value):
        message = str(error)
        assert broker.bootstrap in message
        for variable in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM"):
            assert variable in message
        assert "Unable to bootstrap" not in message
        assert PASSWORD not in error_text(error)


@pytest.mark.asyncio
async def test_the_filter_leaves_the_loggers_when_the_backend_closes() -> None:
    async with RefusingBroker() as broker:
        backend = KafkaBackend(plain_settings(broker.bootstrap))
        with pytest.raises(AuthenticationError):
            await backend.publish("t", {"x": 1})
        loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.conn")]
        assert all(any(isinstance(f, SecretFilter) for f in lg.filters) for lg in loggers)
        await backend.close()
    assert not [f for lg in loggers for f in lg.filters if isinstance(f, SecretFilter)]


def test_the_secrets_to_hide_are_the_passwords() -> None:
    settings = plain_settings(
        "b:1", security_protocol="SASL_SSL", ssl_key_password=Secret(KEY_PASSWORD)
    )
    assert set(settings.secrets()) == {PASSWORD, KEY_PASSWORD}
    assert KafkaSettings().secrets() == ()
