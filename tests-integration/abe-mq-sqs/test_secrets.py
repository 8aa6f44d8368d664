"""Hostile input and secrets against a real endpoint: what leaves the process, and what is logged.

`RecordingProxy` is a loopback TCP forwarder that keeps every byte clients send, so a
test can tell what crossed the wire (a TLS handshake, credentials, a message).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from abe_brokers import SqsBroker

from abe.errors import BackendUnavailableError, PayloadError
from abe.settings import Secret
from abe.testing import RecordingProxy
from abe.testing.helpers import next_delivery, unique
from abe_mq_sqs import SqsBackend, SqsSettings

pytestmark = pytest.mark.asyncio

KEY_ID = "AKIAABESECRETSTEST01"
SECRET_KEY = "abeSecretKey/with+Slash0123456789abcdefXYZ"
TOKEN = "FwoGZXIvYXdzEabe//////////wEaDAbeSessionToken+Value/0123456789="
ENDPOINT_SECRET = "abe-endpoint-signature-0123456789"
SECRETS = (KEY_ID, SECRET_KEY, TOKEN, ENDPOINT_SECRET)
LOGGERS = ("", "botocore", "aiobotocore", "urllib3", "aiohttp", "abe")
"""Every logger the test turns to DEBUG ("" is the root logger)."""


class Lines(logging.Handler):
    """Every record as a handler would write it: message, traceback and stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, self.format(record)))


@pytest.fixture
def debug_logs() -> Iterator[Lines]:
    """DEBUG on the root logger and every client library's, all written to `Lines`."""
    handler = Lines()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def credentials(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "region": "us-east-1",
        "access_key_id": Secret(KEY_ID),
        "secret_access_key": Secret(SECRET_KEY),
        "session_token": Secret(TOKEN),
    }
    values.update(overrides)
    return values


def forms(secret: str) -> tuple[str, ...]:
    """The secret as is and percent-encoded, as a log line or URL could carry it."""
    return (secret, quote(secret, safe=""))


def error_texts(error: BaseException) -> list[str]:
    """What a program can show of an error: its text, its repr, its printed traceback
    (the causes it was raised from included), for it and each exception in its chain."""
    texts = ["".join(traceback.format_exception(error))]
    seen: BaseException | None = error
    while seen is not None:
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


async def test_no_secret_in_any_log_record_repr_or_error(
    sqs_broker: SqsBroker, closed_endpoint: str, debug_logs: Lines
) -> None:
    """Session token, keys and a secret endpoint option, with DEBUG on everywhere: a publish
    (and a delivery) through moto, and a publish to an endpoint where nothing listens."""
    key = unique("secrets")
    option = f"/?X-Amz-Signature={ENDPOINT_SECRET}"
    good = SqsSettings(**credentials(endpoint_url=sqs_broker.endpoint_url + option))
    texts = [repr(good), str(good.describe())]
    async with SqsBackend(good) as backend:
        texts.append(repr(backend))
        await backend.publish(key, {"n": 1}, headers={"trace": "t-1"})
        async with backend.subscribe(group="g", keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            assert delivery.payload == {"n": 1}
            await delivery.ack()

    failing = SqsSettings(**credentials(endpoint_url=closed_endpoint + option, max_attempts=1))
    async with SqsBackend(failing) as backend:
        texts.append(repr(backend))
        with pytest.raises(BackendUnavailableError) as failed:
            await backend.publish(key, {"n": 2})
    assert "Could not connect" in str(failed.value)
    texts += error_texts(failed.value)

    lines = [line for _, line in debug_logs.records]
    sent = [line for line in lines if "Sending http request" in line]
    assert sent, "botocore logged no request at DEBUG: the test would see nothing"
    assert any("X-Amz-Security-Token" in line for line in sent)
    assert any("CanonicalRequest" in line for line in lines)
    assert any("Traceback" in line for line in lines)  # the failed send, with its traceback
    for text in texts + lines:
        for secret in SECRETS:
            for form in forms(secret):
                assert form not in text, f"{secret!r} shown: {text[:300]!r}"


def _hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def test_https_to_a_plaintext_endpoint_sends_no_credential(sqs_broker: SqsBroker) -> None:
    """https:// at moto's plain-HTTP port: the handshake fails before any request is sent,
    and the error says TLS failed and which variable to fix."""
    host, port = _hostport(sqs_broker.endpoint_url)
    async with RecordingProxy(host, port) as proxy:  # the control: plain http, same keys
        plain = SqsSettings(**credentials(endpoint_url=f"http://127.0.0.1:{proxy.port}"))
        async with SqsBackend(plain) as backend:
            await backend.publish(unique("tls-control"), {"n": 1})
        assert KEY_ID.encode() in proxy.sent, "the proxy would not see a credential"
        assert TOKEN.encode() in proxy.sent

    async with RecordingProxy(host, port) as proxy:
        settings = SqsSettings(
            **credentials(
                endpoint_url=f"https://127.0.0.1:{proxy.port}",
                operation_timeout=5.0,
                connect_timeout=2.0,
            )
        )
        async with SqsBackend(settings) as backend:
            with pytest.raises(BackendUnavailableError) as failed:
                await backend.publish(unique("tls"), {"n": 1})
        sent = proxy.sent
    assert sent.startswith(b"\x16\x03"), "the client did not start a TLS handshake"
    for secret in SECRETS:
        assert secret.encode() not in sent
    text = str(failed.value)
    assert "SSL" in text  # the library's own words for what failed...
    assert "TLS handshake with the endpoint failed" in text  # ...and what to do about it
    assert "AWS_ENDPOINT_URL_SQS" in text
    for secret in SECRETS:
        assert all(secret not in shown for shown in error_texts(failed.value))


async def test_a_lone_surrogate_header_is_refused_before_io(
    sqs_broker: SqsBroker, raw_sqs: Any
) -> None:
    """Core refuses a header value that cannot be UTF-8; not one byte more goes out."""
    host, port = _hostport(sqs_broker.endpoint_url)
    key = unique("surrogate")
    async with RecordingProxy(host, port) as proxy:
        settings = SqsSettings(**credentials(endpoint_url=f"http://127.0.0.1:{proxy.port}"))
        async with SqsBackend(settings) as backend:
            await backend.publish(key, {"n": 1})  # the queue resolved, a connection open
            before = len(proxy.sent)
            with pytest.raises(PayloadError) as refused:
                await backend.publish(key, {"n": 2}, headers={"note": "half \ud800 a pair"})
            with pytest.raises(PayloadError):
                await backend.publish_many(key, [{"n": 3}], headers={"note": "\udfff"})
            assert len(proxy.sent) == before
    assert "note" in str(refused.value)
    assert "surrogate" in str(refused.value)
    url = (await raw_sqs.get_queue_url(QueueName=key))["QueueUrl"]
    bodies = []
    with contextlib.suppress(KeyError):
        received = await raw_sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        bodies = [message["Body"] for message in received["Messages"]]
    assert bodies == ['{"n":1}']
