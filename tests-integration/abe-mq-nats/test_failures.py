"""Failure and configuration scenarios on NATS servers the tests own (and on the shared one).

Authentication (token, user/password, NKey: right and wrong), TLS (server-verified and
mutual), bad input (wildcard keys, payloads over the server's max_payload), streams that
are lost or configured, partial batch failures, and a kill -9 in the middle of consuming.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import nats.js.errors
import nkeys
import pytest
from abe_brokers import NatsServerFactory, TlsFiles
from abe_mq_nats_testing import Janitor, created_by_abe, environment, raw_client, settings_for
from nats.js import api

from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
    PublishError,
)
from abe.testing import unique
from abe.testing.helpers import receive, receive_payloads
from abe_mq_nats import NatsBackend, NatsSettings

pytestmark = pytest.mark.asyncio

TIMEOUT = 3.0
"""ABE_MQ_OPERATION_TIMEOUT of these tests: refusals must come well before it."""


async def round_trip(backend: NatsBackend) -> None:
    key = unique("auth")
    await backend.publish(key, {"ok": True})
    assert await receive_payloads(backend, [key], unique("group"), 1, timeout=20) == [{"ok": True}]


async def refused(backend: NatsBackend, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    """The publish fails with AuthenticationError, quickly, and nothing shows `secret`."""
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationError) as failed:
            await backend.publish(unique("auth"), {"x": 1})
    finally:
        await backend.close()
    assert time.monotonic() - started < TIMEOUT, "credentials refused only after the timeout"
    assert secret not in str(failed.value)
    assert secret not in repr(backend)
    for record in caplog.records:
        assert secret not in record.getMessage()


def from_env(**env: str) -> NatsBackend:
    with environment({"ABE_MQ_OPERATION_TIMEOUT": str(TIMEOUT), **env}):
        return NatsBackend.from_env()


# --- authentication ------------------------------------------------------------------------


async def test_token(
    nats_server_factory: NatsServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(token="right-token-4f1")
    bare = f"nats://{server.host}:{server.port}"
    async with from_env(NATS_URL=bare, NATS_TOKEN="right-token-4f1") as backend:
        await round_trip(backend)
    async with from_env(NATS_URL=server.url) as backend:  # the token inside the URL
        await round_trip(backend)
    await refused(from_env(NATS_URL=bare, NATS_TOKEN="wrong-token-9z7"), "wrong-token-9z7", caplog)
    await refused(
        from_env(NATS_URL=f"nats://wr0ng-77@{server.host}:{server.port}"), "wr0ng-77", caplog
    )


async def test_user_and_password(
    nats_server_factory: NatsServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = nats_server_factory(user="abe", password="right-pass-83")
    bare = f"nats://{server.host}:{server.port}"
    async with from_env(NATS_URL=bare, NATS_USER="abe", NATS_PASSWORD="right-pass-83") as backend:
        await round_trip(backend)
    async with from_env(NATS_URL=server.url) as backend:
        await round_trip(backend)
    wrong = from_env(NATS_URL=bare, NATS_USER="abe", NATS_PASSWORD="wrong-pass-61")
    await refused(wrong, "wrong-pass-61", caplog)
    await refused(from_env(NATS_URL=bare), "right-pass-83", caplog)  # no credentials at all


async def test_nkey(
    nats_server_factory: NatsServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    config = tmp_path / "nkey.conf"
    config.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    server = nats_server_factory(extra_args=["-c", str(config)])
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed)
    async with from_env(NATS_URL=server.url, NATS_NKEY_SEED=seed) as backend:
        await round_trip(backend)
    async with from_env(NATS_URL=server.url, NATS_NKEY_SEED=str(seed_file)) as backend:
        await round_trip(backend)
    other = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    await refused(from_env(NATS_URL=server.url, NATS_NKEY_SEED=other), other, caplog)


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_with_the_servers_ca(
    nats_server_factory: NatsServerFactory, tls_files: TlsFiles
) -> None:
    server = nats_server_factory(tls=tls_files)
    assert server.url.startswith("tls://")
    async with from_env(NATS_URL=server.url, NATS_TLS_CA=str(tls_files.ca_cert)) as backend:
        await round_trip(backend)
    plain = f"nats://{server.host}:{server.port}"  # the CA alone turns TLS on
    async with from_env(NATS_URL=plain, NATS_TLS_CA=str(tls_files.ca_cert)) as backend:
        await round_trip(backend)
    untrusted = from_env(NATS_URL=server.url)  # the system CAs do not know the test CA
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="certificate verify failed"):
        await untrusted.publish(unique("tls"), {"x": 1})
    assert time.monotonic() - started < TIMEOUT + 2
    await untrusted.close()


async def test_tls_is_never_silently_dropped(
    nats_server_factory: NatsServerFactory, tls_files: TlsFiles
) -> None:
    plain = nats_server_factory()
    backend = from_env(NATS_URL=plain.url, NATS_TLS_CA=str(tls_files.ca_cert))
    with pytest.raises(BackendUnavailableError, match=r"TLS was asked for .* did not offer it"):
        await backend.publish(unique("tls"), {"x": 1})
    await backend.close()


async def test_mutual_tls(nats_server_factory: NatsServerFactory, tls_files: TlsFiles) -> None:
    server = nats_server_factory(user="abe", password="tls-pass-5", tls=tls_files, tls_verify=True)
    env = {"NATS_URL": server.url, "NATS_TLS_CA": str(tls_files.ca_cert)}
    client_pair = {
        "NATS_TLS_CERT": str(tls_files.client_cert),
        "NATS_TLS_KEY": str(tls_files.client_key),
    }
    async with from_env(**env, **client_pair) as backend:
        await round_trip(backend)
    without_certificate = from_env(**env)
    with pytest.raises(BackendUnavailableError) as failed:
        await without_certificate.publish(unique("tls"), {"x": 1})
    await without_certificate.close()
    assert "tls-pass-5" not in str(failed.value)


# --- bad input ---------------------------------------------------------------------------------


async def test_bad_keys_are_refused_before_any_io() -> None:
    backend = NatsBackend(NatsSettings(servers=("nats://127.0.0.1:1",), operation_timeout=1.0))
    started = time.monotonic()
    for key in ("orders.*", "orders.>", "orders created", "orders..x", "$JS.API.INFO"):
        with pytest.raises(InvalidKeyError):
            await backend.publish(key, {"x": 1})
        with pytest.raises(InvalidKeyError):
            await backend.publish_many(key, [{"x": 1}])
        with pytest.raises(InvalidKeyError):
            backend.subscribe(group="g", keys=[key])
    assert time.monotonic() - started < 0.5
    await backend.close()


async def test_payload_over_the_servers_max_payload(
    nats_server_factory: NatsServerFactory, tmp_path: Path
) -> None:
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 32768\n")  # under 64 KiB: an eighth is kept for headers
    server = nats_server_factory(extra_args=["-c", str(config)])
    backend = NatsBackend(settings_for(server.url, operation_timeout=TIMEOUT))
    key = unique("big")
    try:
        assert backend.max_payload_bytes == 1_048_576 - 8192, "not connected: the default"
        with pytest.raises(PayloadError, match="max_payload of 32,768"):
            await backend.publish(key, {"blob": "x" * 100_000})  # under 1 MiB: found on connect
        assert backend.max_payload_bytes == 32768 - 4096, "read from the server's INFO"
        with pytest.raises(PayloadError, match="over this backend's limit"):
            await backend.publish(key, {"blob": "x" * 30_000})
        with pytest.raises(PayloadError):
            await backend.publish_many(key, [{"n": 1}, {"blob": "x" * 30_000}])
        largest = {"blob": "x" * (backend.max_payload_bytes - len('{"blob":""}'))}
        with pytest.raises(PayloadError, match="with its headers"):  # 4 KiB of user headers
            await backend.publish(key, largest, headers={"h": "y" * 4000})
        await backend.publish(key, largest)  # the connection is still healthy
        await backend.publish(key, {"after": True})
        got = await receive_payloads(backend, [key], unique("group"), 2, timeout=20)
        assert got == [largest, {"after": True}], "nothing refused was published"
    finally:
        await backend.close()


async def test_unreachable_server_on_subscribe_and_fetch() -> None:
    backend = NatsBackend(
        NatsSettings(servers=("nats://127.0.0.1:1",), operation_timeout=1.5, connect_timeout=0.5)
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="could not be opened"):
        async with backend.subscribe(group="g", keys=["orders"]):
            pass
    assert time.monotonic() - started < 1.5 + 2
    await backend.close()


# --- streams -----------------------------------------------------------------------------------


async def test_memory_streams_lost_in_a_restart_are_created_again(
    nats_server_factory: NatsServerFactory,
) -> None:
    server = nats_server_factory()
    backend = NatsBackend(settings_for(server.url, storage="memory", operation_timeout=TIMEOUT))
    key, group = unique("memory"), unique("group")
    try:
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            await backend.publish_many(key, [{"n": n} for n in range(3)])
            assert [d.payload["n"] for d in await receive(subscription, 3)] == [0, 1, 2]
            await server.arestart()  # the stream and its consumer are gone
            for _ in range(100):
                try:
                    await backend.publish(key, {"n": 3})
                    break
                except BackendUnavailableError:
                    await asyncio.sleep(0.2)
            else:
                pytest.fail("publishing never resumed after the restart")
            [delivery] = await receive(subscription, 1, timeout=30)
            assert delivery.payload == {"n": 3}
    finally:
        await backend.close()


async def test_a_configured_stream(
    nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    prefix = unique("configured")
    stream = unique("CONFIGURED")
    async with raw_client(nats_broker.url) as (_, js):
        await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
        nats_janitor.streams.add(stream)
    backend = make_backend(stream=stream)
    inside, outside = f"{prefix}.orders", unique("outside")
    await backend.publish(inside, {"where": "configured"})
    await backend.publish(outside, {"where": "own"})
    streams = backend._jetstream.streams
    assert streams[inside].name == stream
    assert not streams[inside].dedicated
    async with raw_client(nats_broker.url) as (_, js):
        assert await created_by_abe(js, streams[outside].name)
        assert not await created_by_abe(js, stream)
    assert await receive_payloads(backend, [inside, outside], unique("group"), 2) in (
        [{"where": "configured"}, {"where": "own"}],
        [{"where": "own"}, {"where": "configured"}],
    )
    async with raw_client(nats_broker.url) as (_, js):
        consumers = await js.consumers_info(stream)
        assert consumers
        assert all(info.config.filter_subject == inside for info in consumers)
        await js.publish(f"{prefix}.other", b"{}")  # not abe's key: delete_keys keeps it
        await backend.delete_keys([inside, outside])
        assert await js.consumers_info(stream) == []
        info = await js.stream_info(stream)  # an operator's stream is purged, never deleted
        assert info.state.messages == 1
        with pytest.raises(nats.js.errors.NotFoundError):  # the stream abe made is gone
            await js.find_stream_name_by_subject(outside)
    missing = make_backend(stream=unique("MISSING"))
    with pytest.raises(ConfigurationError, match="ABE_NATS_STREAM"):
        await missing.publish(inside, {"x": 1})


async def test_partial_batch_failure_names_the_refused_messages(
    nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    key = unique("full")
    stream = unique("FULL")
    async with raw_client(nats_broker.url) as (_, js):
        await js.add_stream(name=stream, subjects=[key], max_msgs=3, discard=api.DiscardPolicy.NEW)
        nats_janitor.streams.add(stream)
    backend = make_backend()
    with pytest.raises(PublishError) as failed:
        await backend.publish_many(key, [{"n": n} for n in range(5)])
    assert sorted(failed.value.failed) == [3, 4]
    assert failed.value.total == 5
    assert "maximum messages" in failed.value.failed[3]
    got = await receive_payloads(backend, [key], unique("group"), 3)
    assert [payload["n"] for payload in got] == [0, 1, 2]


# --- consumption ---------------------------------------------------------------------------------


async def test_an_idle_key_does_not_slow_a_busy_one(make_backend: Any) -> None:
    backend = make_backend(prefetch=20)
    busy, idle = unique("busy"), unique("idle")
    await backend.publish(idle, {"key": "idle"})
    await backend.publish_many(busy, [{"key": "busy", "n": n} for n in range(300)])
    started = time.monotonic()
    async with backend.subscribe(group=unique("group"), keys=[busy, idle]) as subscription:
        deliveries = await receive(subscription, 301, timeout=30)
    elapsed = time.monotonic() - started
    assert sum(d.payload["key"] == "busy" for d in deliveries) == 300
    assert elapsed < 10, f"301 messages took {elapsed:.1f}s"


async def test_consumption_survives_a_kill(nats_server_factory: NatsServerFactory) -> None:
    server = nats_server_factory()
    backend = NatsBackend(settings_for(server.url, operation_timeout=TIMEOUT))
    key, group = unique("kill"), unique("group")
    try:
        await backend.publish_many(key, [{"n": n} for n in range(50)])
        seen: set[int] = set()
        async with backend.subscribe(group=group, keys=[key], prefetch=10) as subscription:
            for delivery in await receive(subscription, 20):
                seen.add(delivery.payload["n"])
            await server.akill()
            await server.astart()
            while len(seen) < 50:
                delivery = await asyncio.wait_for(subscription.__anext__(), 60)
                seen.add(delivery.payload["n"])
                await delivery.ack()
        assert seen == set(range(50))
    finally:
        await backend.close()
