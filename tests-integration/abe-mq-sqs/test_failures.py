"""Bad input and bad days: each a clear abe error, none hangs, no credential in any of them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)
from abe.settings import Secret
from abe.testing.helpers import WAIT, next_delivery, nothing_arrives, receive, unique
from abe_mq_sqs import SqsBackend, SqsSettings

pytestmark = pytest.mark.asyncio

KEY_ID, SECRET_KEY, TOKEN = "AKIAABEFAILURETEST", "failure-secret-key-value", "failure-token-value"


def _credentials() -> dict[str, Any]:
    return {
        "access_key_id": Secret(KEY_ID),
        "secret_access_key": Secret(SECRET_KEY),
        "session_token": Secret(TOKEN),
    }


def _assert_no_credentials(error: BaseException, records: list[logging.LogRecord]) -> None:
    seen: BaseException | None = error
    while seen is not None:
        for secret in (KEY_ID, SECRET_KEY, TOKEN):
            assert secret not in str(seen), f"{type(seen).__name__} shows a credential"
            assert secret not in repr(seen), f"{type(seen).__name__} shows a credential"
        seen = seen.__cause__ or seen.__context__
    for record in records:
        for secret in (KEY_ID, SECRET_KEY, TOKEN):
            assert secret not in record.getMessage(), f"log record from {record.name}"
            assert secret not in (record.exc_text or "")


async def test_refused_credentials(auth_moto_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = SqsSettings(
        region="us-east-1", endpoint_url=auth_moto_url, operation_timeout=10.0, **_credentials()
    )
    async with SqsBackend(settings) as backend:
        assert KEY_ID not in repr(backend)
        assert KEY_ID not in repr(settings)
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as refused:
            await backend.publish(unique("auth"), {"x": 1})
        with pytest.raises(AuthenticationError):
            await backend.subscribe(group="g", keys=[unique("auth")]).open()
        assert time.monotonic() - started < 10.0
    assert "InvalidClientTokenId" in str(refused.value)
    assert any(record.name.startswith("botocore") for record in caplog.records)
    _assert_no_credentials(refused.value, caplog.records)


async def test_silent_endpoint_fails_within_the_operation_timeout(
    silent_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = SqsSettings(
        region="us-east-1",
        endpoint_url=silent_endpoint,
        operation_timeout=2.0,
        connect_timeout=1.0,
        **_credentials(),
    )
    async with SqsBackend(settings) as backend:
        for attempt in (
            lambda: backend.publish(unique("silent"), {"x": 1}),
            lambda: backend.publish_many(unique("silent"), [{"x": 1}, {"x": 2}]),
            lambda: backend.subscribe(group="g", keys=[unique("silent")]).open(),
        ):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError) as failed:
                await asyncio.wait_for(attempt(), 10.0)
            assert time.monotonic() - started < 4.0
            _assert_no_credentials(failed.value, caplog.records)


async def test_refused_connection_fails_fast(closed_endpoint: str) -> None:
    settings = SqsSettings(region="us-east-1", endpoint_url=closed_endpoint, **_credentials())
    async with SqsBackend(settings) as backend:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as failed:
            await backend.subscribe(group="g", keys=[unique("refused")]).open()
        assert time.monotonic() - started < settings.operation_timeout
        assert "Could not connect" in str(failed.value)


async def test_no_region_is_a_configuration_error(closed_endpoint: str) -> None:
    settings = SqsSettings(endpoint_url=None, **_credentials())
    async with SqsBackend(settings) as backend:
        with pytest.raises(ConfigurationError) as refused:
            await backend.publish(unique("region"), {"x": 1})
    assert "region" in str(refused.value).lower()


async def test_no_credentials_is_an_authentication_error(
    sqs_settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask instance metadata here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = sqs_settings(access_key_id=None, secret_access_key=None)
    async with SqsBackend(settings) as backend:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as refused:
            await backend.publish(unique("no-creds"), {"x": 1})
        assert time.monotonic() - started < 5.0
    assert "credentials" in str(refused.value).lower()


async def test_queue_name_sqs_refuses(sqs_settings: Any) -> None:
    """abe refuses such keys itself; when SQS is the one to refuse, the error is the same kind."""
    async with SqsBackend(sqs_settings()) as backend:
        with pytest.raises(InvalidKeyError):
            await backend.publish("bad!name", {"x": 1})
        with pytest.raises(InvalidKeyError) as refused:  # past abe's check, straight to SQS
            await backend._guard(backend._sqs.url("bad!name"), "publish")
    assert "CreateQueue" in str(refused.value) or "GetQueueUrl" in str(refused.value)


async def test_missing_queue_without_auto_create(sqs_settings: Any) -> None:
    key = unique("missing")
    async with SqsBackend(sqs_settings(auto_create=False)) as backend:
        with pytest.raises(InvalidKeyError) as refused:
            await backend.publish(key, {"x": 1})
        with pytest.raises(InvalidKeyError):
            await backend.subscribe(group="g", keys=[key]).open()
    assert "ABE_SQS_AUTO_CREATE" in str(refused.value)
    assert key in str(refused.value)


async def test_prefixed_queue_names(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("prefixed")
    async with SqsBackend(sqs_settings(queue_prefix="team-a-")) as backend:
        await backend.publish(key, {"x": 1})
        await raw_sqs.get_queue_url(QueueName=f"team-a-{key}")
        with pytest.raises(InvalidKeyError) as refused:
            await backend.publish("k" * 70, {"x": 1})  # 7 + 70 + "-dlq" > 80
        await backend.publish("k" * 69, {"x": 1})
    assert "prefix" in str(refused.value)


async def test_batch_over_the_size_limit_is_split(sqs_settings: Any) -> None:
    key = unique("big-batch")
    blob = "x" * 300_000
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish_many(key, [{"n": n, "blob": blob} for n in range(5)])  # ~1.5 MB
        async with backend.subscribe(group=unique("g"), keys=[key]) as subscription:
            deliveries = await receive(subscription, 5)
    assert sorted(d.payload["n"] for d in deliveries) == list(range(5))


async def test_message_over_the_queue_maximum(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("small-queue")
    await raw_sqs.create_queue(QueueName=key, Attributes={"MaximumMessageSize": "1024"})
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"fits": True})
        with pytest.raises(PayloadError) as refused:
            await backend.publish(key, {"blob": "x" * 2000})
        with pytest.raises((PayloadError, AbeError)):
            await backend.publish_many(key, [{"blob": "x" * 2000}, {"small": 1}])
    assert "1024" in str(refused.value)


async def test_payload_headers_over_the_limit_are_refused_before_io(closed_endpoint: str) -> None:
    settings = SqsSettings(
        region="us-east-1", endpoint_url=closed_endpoint, max_payload_bytes=2048, **_credentials()
    )
    async with SqsBackend(settings) as backend:
        started = time.monotonic()
        with pytest.raises(PayloadError) as refused:
            await backend.publish(unique("k"), {"blob": "x" * 2000}, headers={"big": "y" * 2000})
        assert time.monotonic() - started < 0.5
    assert "headers" in str(refused.value)


async def test_deleted_queue_is_created_again(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("deleted")
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"n": 1})
        url = (await raw_sqs.get_queue_url(QueueName=key))["QueueUrl"]
        await raw_sqs.delete_queue(QueueUrl=url)
        await backend.publish(key, {"n": 2})  # the cached URL is gone: resolved and re-created
        async with backend.subscribe(group="g", keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            assert delivery.payload == {"n": 2}
            await delivery.ack()


async def test_moto_restart_loses_messages_but_both_sides_resume(moto_factory: Any) -> None:
    """moto keeps queues in memory: a restart loses them (real SQS would not). abe notices the
    queue is gone, creates it again and carries on: same backend object, no new client."""
    server = moto_factory.plain()
    settings = SqsSettings(
        region="us-east-1",
        endpoint_url=server.endpoint_url,
        access_key_id=Secret("testing"),
        secret_access_key=Secret("testing"),
        redelivery_timeout=2.0,
        operation_timeout=5.0,
        wait_time_seconds=1,
        poll_interval=1.0,
    )
    key = unique("moto-restart")
    async with SqsBackend(settings) as backend:
        await backend.publish(key, {"before": True})
        async with backend.subscribe(group="g", keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            await delivery.ack()
            await server.arestart()
            deadline = time.monotonic() + WAIT
            while True:  # publishing resumes once moto answers again
                try:
                    await backend.publish(key, {"after": True})
                    break
                except BackendUnavailableError:
                    assert time.monotonic() < deadline, "publishing did not resume"
                    await asyncio.sleep(0.2)
            delivery = await next_delivery(subscription)
            assert delivery.payload == {"after": True}
            await delivery.ack()


async def test_idle_queue_does_not_delay_another(sqs_settings: Any) -> None:
    idle, busy = unique("idle"), unique("busy")
    async with (
        SqsBackend(sqs_settings()) as backend,  # 20 s long polls
        backend.subscribe(group="g", keys=[idle, busy]) as subscription,
    ):
        waiting = asyncio.ensure_future(next_delivery(subscription))
        await asyncio.sleep(1.0)  # both long polls are in flight now
        started = time.monotonic()
        await backend.publish(busy, {"n": 1})
        delivery = await waiting
        assert time.monotonic() - started < 5.0, "an idle queue's long poll held it back"
        await delivery.ack()
        await backend.publish(idle, {"n": 2})  # the other queue's poll is still out
        started = time.monotonic()
        delivery = await next_delivery(subscription)
        assert delivery.payload == {"n": 2}
        assert time.monotonic() - started < 5.0
        await delivery.ack()


async def test_acks_beyond_ten_are_split(sqs_settings: Any) -> None:
    key = unique("many-acks")
    async with SqsBackend(sqs_settings(prefetch=50)) as backend:
        await backend.publish_many(key, [{"n": n} for n in range(35)])
        async with backend.subscribe(group="g", keys=[key]) as subscription:
            deliveries = await receive(subscription, 35, ack=False)
            await asyncio.gather(*(delivery.ack() for delivery in deliveries))
        async with backend.subscribe(group="g", keys=[key]) as subscription:
            await nothing_arrives(subscription, backend.redelivery_timeout * 2 + 1)
