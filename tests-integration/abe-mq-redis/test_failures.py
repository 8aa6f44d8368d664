"""Bad input and bad days: credentials, TLS, unreachable servers, wrong key types, restarts.

Each failure must name its cause, come within the operation timeout (none hangs) and
never show a secret. Servers with passwords, ACL users or TLS are started by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import redis.asyncio
from abe_brokers import RedisBroker, RedisServerFactory, RedisUser, TlsFiles, make_tls_files
from redis.asyncio.connection import RedisSSLContext

from abe.backends.message_queue.base import BaseBackend
from abe.backends.message_queue.base.keys import dead_letter_key
from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
)
from abe.settings import Secret
from abe.testing import unique
from abe.testing.helpers import next_delivery, nothing_arrives, receive
from abe_mq_redis import RedisBackend, RedisSettings
from abe_mq_redis._client import delayed_key

Make = Callable[..., BaseBackend]
pytestmark = pytest.mark.asyncio

SECRET = "N0t-This-One-Ever"


async def _refused(
    backend: BaseBackend, error: type[Exception], within: float
) -> tuple[Exception, Exception]:
    """The errors of a publish and of a subscription on `backend`, each within `within` s."""

    async def subscribe() -> None:
        subscription = backend.subscribe(group=unique("g"), keys=[unique("k")])
        try:
            await subscription.open()
        finally:
            await subscription.aclose()

    found = []
    for attempt in ("publish", "subscribe"):
        action = backend.publish(unique("k"), {"x": 1}) if attempt == "publish" else subscribe()
        started = time.monotonic()
        with pytest.raises(error) as refused:
            await asyncio.wait_for(action, 2 * within)
        elapsed = time.monotonic() - started
        assert elapsed < within, f"{attempt} took {elapsed:.1f}s to fail (limit {within:g}s)"
        found.append(refused.value)
    return found[0], found[1]


def _no_secret(error: BaseException, secret: str) -> None:
    current: BaseException | None = error
    while current is not None:
        assert secret not in str(current)
        assert secret not in repr(current)
        current = current.__cause__ or current.__context__


# ---- credentials --------------------------------------------------------------------


async def test_acl_user_right_and_wrong_password(
    redis_server_factory: RedisServerFactory, make_backend: Make
) -> None:
    server = redis_server_factory(users=[RedisUser("orders-svc", "right-password")])
    good = make_backend(server.url_for("orders-svc", "right-password"))
    async with good:
        key = unique("acl")
        await good.publish(key, {"ok": True})
        async with good.subscribe(group=unique("g"), keys=[key]) as subscription:
            assert (await next_delivery(subscription)).payload == {"ok": True}

    bad = make_backend(server.url_for("orders-svc", SECRET), operation_timeout=3.0)
    async with bad:
        published, subscribed = await _refused(bad, AuthenticationError, within=3.0)
    for error in (published, subscribed):
        assert "refused the credentials" in str(error)
        assert "REDIS_PASSWORD" in str(error)
        _no_secret(error, SECRET)


async def test_requirepass_from_the_environment(
    redis_server_factory: RedisServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory(password="server-password")
    for variable in RedisBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{server.port}/0")
    monkeypatch.setenv("REDIS_PASSWORD", "server-password")
    async with RedisBackend.from_env() as backend:
        await backend.publish(unique("env"), {"authenticated": True})

    monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("ABE_MQ_OPERATION_TIMEOUT", "3")
    async with RedisBackend.from_env() as backend:
        assert SECRET not in repr(backend)
        published, _ = await _refused(backend, AuthenticationError, within=3.0)
    _no_secret(published, SECRET)

    monkeypatch.delenv("REDIS_PASSWORD")
    async with RedisBackend.from_env() as backend:  # no password at all: NOAUTH
        published, _ = await _refused(backend, AuthenticationError, within=3.0)
    assert "REDIS_PASSWORD" in str(published)


@pytest.fixture
def every_record() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the test, with DEBUG on the root logger, `redis` and `redis.*`."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    names = ["", "redis", *(n for n in logging.Logger.manager.loggerDict if n.startswith("redis."))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    handler = Keep(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def test_a_refused_password_is_in_no_log_record_error_or_traceback(
    redis_server_factory: RedisServerFactory,
    make_backend: Make,
    every_record: list[logging.LogRecord],
) -> None:
    secret = "Wr0ng;pass%w0rd-" + SECRET  # ';' and '%': percent-encoded in the URL
    server = redis_server_factory(
        password="the-right-one", users=[RedisUser("svc", "the-right-one-too")]
    )
    backends = [
        make_backend(server.url_for(None, secret), operation_timeout=3.0),
        make_backend(server.url_for("svc", secret), operation_timeout=3.0),
        make_backend(server.url_for(), password=Secret(secret), operation_timeout=3.0),
    ]
    errors: list[BaseException] = []
    for backend in backends:
        async with backend:
            errors += await _refused(backend, AuthenticationError, within=3.0)
            assert SECRET not in repr(backend)
    assert any(record.levelno == logging.DEBUG for record in every_record)
    forms = {secret, quote(secret, safe=""), repr(secret)[1:-1], SECRET}
    texts = [str(vars(record)) for record in every_record]
    texts += [logging.Formatter("%(message)s").format(record) for record in every_record]
    for error in errors:
        texts.append("".join(traceback.format_exception(error)))
        current: BaseException | None = error
        while current is not None:
            texts += [str(current), repr(current)]
            current = current.__cause__ or current.__context__
    for text in texts:
        for form in forms:
            assert form not in text, text


async def test_acl_permissions_are_authentication_errors(
    redis_server_factory: RedisServerFactory, make_backend: Make
) -> None:
    server = redis_server_factory(
        users=[RedisUser("narrow", "pw", ("~allowed:*", "+@all", "-xadd"))]
    )
    backend = make_backend(server.url_for("narrow", "pw"), operation_timeout=3.0)
    async with backend:
        with pytest.raises(AuthenticationError) as refused:
            await backend.publish("allowed:orders", {"x": 1})
    assert "may not" in str(refused.value)
    assert "ACL" in str(refused.value)


async def test_the_documented_acl_permissions_suffice(
    redis_server_factory: RedisServerFactory, make_backend: Make
) -> None:
    rules = (
        "~orders*",
        "~abe:{orders*",
        "+@stream",
        "+@sortedset",
        "+@transaction",
        "+@connection",
        "+type",
    )
    rules += ("+del", "+exists")  # for delete_keys (abe check, demo, bench) and abe consume
    server = redis_server_factory(users=[RedisUser("minimal", "pw", rules)])
    backend = make_backend(server.url_for("minimal", "pw"), redelivery_timeout=1.0)
    key, group = f"orders-{unique('acl')}", unique("g")
    async with backend:
        await backend.publish_many(key, [{"n": 1}, {"n": 2}])
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            first = await next_delivery(subscription)
            await first.nack(0.2)  # XCLAIM IDLE, CLIENT UNBLOCK
            second = await next_delivery(subscription)
            await second.nack(1.5)  # longer than the redelivery timeout: the sorted set
            got = await receive(subscription, 2)
            assert sorted(d.payload["n"] for d in got) == [1, 2]
            assert all(d.attempt == 2 for d in got)
        admin = redis.asyncio.Redis.from_url(server.url)
        try:  # the member left the group (WATCH, XINFO, MULTI, XGROUP DELCONSUMER, EXEC)
            assert await admin.xinfo_consumers(key, group) == []
            assert await backend.existing_keys([key, f"{key}-absent"]) == [key]  # EXISTS
            await backend.delete_group(group, [key])  # XGROUP DESTROY, DEL
            assert await admin.xinfo_groups(key) == []
            await backend.delete_keys(key)  # TYPE, XINFO GROUPS, DEL
            assert await admin.exists(key) == 0
        finally:
            await admin.aclose()


# ---- TLS ----------------------------------------------------------------------------


async def test_tls_with_the_ca(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles, make_backend: Make
) -> None:
    server = redis_server_factory(tls=tls_files)
    assert server.url.startswith("rediss://")
    backend = make_backend(server.url, tls_ca_file=tls_files.ca_cert)
    async with backend:
        key = unique("tls")
        await backend.publish(key, {"secure": True})
        async with backend.subscribe(group=unique("g"), keys=[key]) as subscription:
            assert (await next_delivery(subscription)).payload == {"secure": True}


async def test_tls_with_a_client_certificate(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles, make_backend: Make
) -> None:
    server = redis_server_factory(tls=tls_files, tls_client_auth=True)
    backend = make_backend(
        server.url,
        tls_ca_file=tls_files.ca_cert,
        tls_cert_file=tls_files.client_cert,
        tls_key_file=tls_files.client_key,
    )
    async with backend:
        await backend.publish(unique("mtls"), {"mutual": True})

    without = make_backend(server.url, tls_ca_file=tls_files.ca_cert, operation_timeout=3.0)
    async with without:
        published, _ = await _refused(without, BackendUnavailableError, within=3.5)
    assert "REDIS_TLS_CERT_FILE" in str(published), published


async def test_tls_mismatches_are_clear(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles, make_backend: Make
) -> None:
    tls_server = redis_server_factory(tls=tls_files)
    plain_server = redis_server_factory()

    untrusted = make_backend(tls_server.url, operation_timeout=3.0)  # system CAs only
    async with untrusted:
        published, _ = await _refused(untrusted, BackendUnavailableError, within=3.5)
    assert "REDIS_TLS_CA_FILE" in str(published), published

    plain_to_tls = make_backend(
        tls_server.url.replace("rediss://", "redis://"), operation_timeout=3.0
    )
    async with plain_to_tls:
        published, _ = await _refused(plain_to_tls, BackendUnavailableError, within=3.5)
    assert "rediss://" in str(published), published

    tls_to_plain = make_backend(
        plain_server.url.replace("redis://", "rediss://"),
        tls_ca_file=tls_files.ca_cert,
        operation_timeout=3.0,
    )
    async with tls_to_plain:
        published, _ = await _refused(tls_to_plain, BackendUnavailableError, within=3.5)
    assert "TLS" in str(published), published
    assert "redis://" in str(published), published


async def test_tls_checks_the_host_name(
    redis_server_factory: RedisServerFactory, make_backend: Make, tmp_path: Path
) -> None:
    # a certificate for 127.0.0.1 only: "localhost" reaches the same server but is not its name
    files = make_tls_files(tmp_path / "pki", server_names=("127.0.0.1",))
    server = redis_server_factory(tls=files)
    unchecked = redis.asyncio.Redis(
        host="localhost",
        port=server.port,
        ssl=True,
        ssl_ca_certs=str(files.ca_cert),
        ssl_check_hostname=False,
    )
    try:
        assert await unchecked.ping()  # reachable, and the chain is trusted: only the name is off
    finally:
        await unchecked.aclose()

    wrong = make_backend(
        f"rediss://localhost:{server.port}/0", tls_ca_file=files.ca_cert, operation_timeout=3.0
    )
    async with wrong:
        published, subscribed = await _refused(wrong, BackendUnavailableError, within=3.5)
    for error in (published, subscribed):
        assert "not for the host name" in str(error), error
        assert "REDIS_URL" in str(error), error
        assert "REDIS_TLS_CA_FILE" in str(error), error

    right = make_backend(f"rediss://127.0.0.1:{server.port}/0", tls_ca_file=files.ca_cert)
    async with right:
        key = unique("tls-name")
        await right.publish(key, {"named": True})
        async with right.subscribe(group=unique("g"), keys=[key]) as subscription:
            assert (await next_delivery(subscription)).payload == {"named": True}


async def test_unix_socket(
    redis_server_factory: RedisServerFactory, make_backend: Make, tmp_path: Path
) -> None:
    socket_path = tmp_path / "redis.sock"
    redis_server_factory(extra_args=["--unixsocket", str(socket_path), "--unixsocketperm", "700"])
    backend = make_backend(f"unix://{socket_path}?db=0")
    async with backend:
        key = unique("unix")
        await backend.publish(key, {"local": True})
        async with backend.subscribe(group=unique("g"), keys=[key]) as subscription:
            assert (await next_delivery(subscription)).payload == {"local": True}


# ---- unreachable ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never says a word (a hung server)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers(silent_server: int, make_backend: Make) -> None:
    backend = make_backend(f"redis://127.0.0.1:{silent_server}/0", operation_timeout=1.0)
    async with backend:
        published, subscribed = await _refused(backend, BackendUnavailableError, within=3.0)
    assert "did not answer within 1s" in str(published), published
    assert "ABE_MQ_OPERATION_TIMEOUT" in str(subscribed), subscribed


# ---- keys of another type -------------------------------------------------------------


async def test_a_key_holding_another_type(
    redis_broker: RedisBroker, make_backend: Make, remember_keys: Callable[..., None]
) -> None:
    key = unique("string")
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    remember_keys(redis_broker.url, key)
    try:
        await raw.set(key, "I am a plain string")
    finally:
        await raw.aclose()
    backend = make_backend(redis_broker.url)
    async with backend:
        attempts: dict[str, Callable[[], Any]] = {
            "publish": lambda: backend.publish(key, {"x": 1}),
            "publish_many": lambda: backend.publish_many(key, [{"x": 1}, {"x": 2}]),
            "subscribe": lambda: backend.subscribe(group=unique("g"), keys=[key]).open(),
            "delete_keys": lambda: backend.delete_keys(key),
        }
        for what, attempt in attempts.items():
            with pytest.raises(InvalidKeyError) as refused:
                await asyncio.wait_for(attempt(), 10)
            assert key in str(refused.value), what
            assert "a Redis string, not a stream" in str(refused.value), what
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    try:
        assert await raw.get(key) == b"I am a plain string"  # untouched
    finally:
        await raw.aclose()


async def test_no_key_can_take_a_name_abe_uses_itself(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    key, group = unique("owned"), unique("g")
    backend = make_backend(redis_broker.url)
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    try:
        async with backend:
            with pytest.raises(InvalidKeyError):  # '{' and '}' are not allowed in keys
                await backend.publish(delayed_key(key, group), {"squatter": True})
            # a dead-letter stream, and the delayed set's old name: streams like any other
            for name in (dead_letter_key(key), f"{key}:abe-delayed:{group}"):
                await backend.publish(name, {"squatter": name})
            await backend.publish(key, {"n": 1})
            async with backend.subscribe(group=group, keys=[key]) as subscription:
                first = await next_delivery(subscription)
                assert first.payload == {"n": 1}
                await first.nack(backend.redelivery_timeout + 0.5)  # through the delayed set
                assert await raw.type(delayed_key(key, group)) == b"zset"
                again = await next_delivery(subscription, 30)
                assert (again.payload, again.attempt) == ({"n": 1}, 2)
                await again.dead_letter("checked")
            dead = await raw.xrange(dead_letter_key(key))
            assert [fields[b"abe-original-key"] for _, fields in dead[1:]] == [key.encode()]
    finally:
        await raw.aclose()


async def test_a_foreign_value_under_a_name_abe_uses_is_named(
    redis_broker: RedisBroker, make_backend: Make, remember_keys: Callable[..., None]
) -> None:
    key, group = unique("foreign"), unique("g")
    taken = delayed_key(key, group)
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    remember_keys(redis_broker.url, taken)
    try:
        await raw.set(taken, "written by something else")
    finally:
        await raw.aclose()
    backend = make_backend(redis_broker.url)
    async with backend:
        await backend.publish(key, {"n": 1})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            with pytest.raises(InvalidKeyError) as refused:
                await next_delivery(subscription)
    assert repr(taken) in str(refused.value), refused.value
    assert "a Redis string" in str(refused.value), refused.value


# ---- blocking reads, restarts, lost groups ----------------------------------------------


async def test_blocking_reads_outlast_the_socket_timeout(
    redis_broker: RedisBroker, make_backend: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # the block (2.5 s) is five times the operation timeout that bounds other calls
    backend = make_backend(redis_broker.url, poll_interval=2.5, operation_timeout=0.5)
    key = unique("block")
    caplog.set_level(logging.WARNING)
    async with backend, backend.subscribe(group=unique("g"), keys=[key]) as subscription:
        await nothing_arrives(subscription, 6.0)  # two whole blocks, nothing cut
        await backend.publish(key, {"late": True})
        assert (await next_delivery(subscription, 10)).payload == {"late": True}
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, problems


async def test_a_restart_without_persistence_recreates_the_group(
    redis_server_factory: RedisServerFactory, make_backend: Make
) -> None:
    server = redis_server_factory(extra_args=["--appendonly", "no"])
    backend = make_backend(server.url, operation_timeout=2.0)
    key, group = unique("volatile"), unique("g")
    async with backend:
        await backend.publish(key, {"before": True})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            assert (await next_delivery(subscription)).payload == {"before": True}
            await server.arestart()  # the stream and its group are gone
            published = False
            for _ in range(100):
                try:
                    await backend.publish(key, {"after": True})
                    published = True
                    break
                except BackendUnavailableError:
                    await asyncio.sleep(0.1)
            assert published
            assert (await next_delivery(subscription, 30)).payload == {"after": True}


async def test_a_deleted_stream_is_read_again(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    backend = make_backend(redis_broker.url)
    key, group = unique("deleted"), unique("g")
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    try:
        async with backend, backend.subscribe(group=group, keys=[key]) as subscription:
            await backend.publish(key, {"n": 1})
            assert (await next_delivery(subscription)).payload == {"n": 1}
            await raw.delete(key)
            await backend.publish(key, {"n": 2})
            assert (await next_delivery(subscription, 30)).payload == {"n": 2}
    finally:
        await raw.aclose()


# ---- delays and membership ------------------------------------------------------------


async def test_a_long_delay_outlives_its_holder(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    holder, other = make_backend(redis_broker.url), make_backend(redis_broker.url)
    key, group = unique("later"), unique("g")
    delay = 3 * holder.redelivery_timeout  # longer than the redelivery timeout
    await holder.publish(key, {"retry": "later"})
    async with holder.subscribe(group=group, keys=[key]) as subscription:
        delivery = await next_delivery(subscription)
        nacked_at = time.monotonic()
        await delivery.nack(delay)
    await holder.close()  # the holder goes away: the sorted set keeps the due time
    async with other, other.subscribe(group=group, keys=[key]) as subscription:
        await nothing_arrives(subscription, delay - 1.0 - (time.monotonic() - nacked_at))
        again = await next_delivery(subscription, 30)
        waited = time.monotonic() - nacked_at
        assert waited >= delay - 0.05, f"came back after {waited:.2f}s, before its {delay}s"
        assert again.payload == {"retry": "later"}
        assert again.attempt >= 2
        await again.ack()
        await nothing_arrives(subscription, 2 * other.redelivery_timeout + 1)


async def test_delete_keys_takes_the_delayed_sets_along(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    backend = make_backend(redis_broker.url)
    key, group = unique("deleted"), unique("g")
    delayed = delayed_key(key, group)
    async with backend:
        await backend.publish(key, {"retry": "much later"})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            await delivery.nack(60)  # longer than the redelivery timeout: the sorted set
        admin = redis.asyncio.Redis.from_url(redis_broker.url)
        try:
            assert await admin.exists(key, delayed) == 2
            await backend.delete_keys(key)
            assert await admin.exists(key, delayed) == 0
        finally:
            await admin.aclose()


async def test_idle_consumers_are_deleted_but_never_with_pending_entries(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    key, group = unique("members"), unique("g")
    raw = redis.asyncio.Redis.from_url(redis_broker.url)

    async def consumers() -> dict[str, int]:
        found = await raw.xinfo_consumers(key, group)
        return {c["name"].decode(): c["pending"] for c in found}

    try:
        done = make_backend(redis_broker.url, consumer_idle_timeout=1.0)
        holding = make_backend(redis_broker.url, redelivery_timeout=60.0)
        await done.publish_many(key, [{"n": 1}, {"n": 2}])
        async with holding.subscribe(group=group, keys=[key], prefetch=1) as subscription:
            await next_delivery(subscription)  # never settled: stays pending with it
            members = await consumers()
            await holding.close()
        assert list((await consumers()).values()) == [1], "a consumer with pending was deleted"
        async with done.subscribe(group=group, keys=[key]) as subscription:
            await receive(subscription, 1)
            assert len(await consumers()) == 2
        assert await consumers() == members  # it left; the holder stays, still pending
        await raw.xgroup_createconsumer(key, group, "someone-long-gone")
        await asyncio.sleep(1.2)
        async with done.subscribe(group=group, keys=[key]) as subscription:
            assert "someone-long-gone" not in await consumers()  # idle, nothing pending
            assert list(members) == [name for name in await consumers() if name in members]
        await done.close()
    finally:
        await raw.aclose()


async def test_maxlen_trims_only_when_configured(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    untrimmed, trimmed = unique("whole"), unique("trimmed")
    raw = redis.asyncio.Redis.from_url(redis_broker.url)
    try:
        async with make_backend(redis_broker.url) as backend:
            await backend.publish_many(untrimmed, [{"n": n} for n in range(1000)])
        async with make_backend(redis_broker.url, maxlen=100) as backend:
            await backend.publish_many(trimmed, [{"n": n} for n in range(1000)])
            for n in range(10):
                await backend.publish(trimmed, {"single": n})
        assert await raw.xlen(untrimmed) == 1000
        assert 100 <= await raw.xlen(trimmed) < 400  # MAXLEN ~: whole nodes only
    finally:
        await raw.aclose()


async def test_close_while_reading_leaves_nothing_behind(
    redis_broker: RedisBroker, make_backend: Make
) -> None:
    name = unique("closing")  # every connection of this backend carries it
    backend = make_backend(f"{redis_broker.url}?client_name={name}")
    key = unique("close")
    admin = redis.asyncio.Redis.from_url(redis_broker.url)

    async def connected() -> int:
        return sum(client["name"] == name for client in await admin.client_list())

    try:
        subscription = backend.subscribe(group=unique("g"), keys=[key])
        await subscription.open()
        waiting = asyncio.ensure_future(subscription.__anext__())
        await asyncio.sleep(0.2)  # blocked in XREADGROUP on the server
        assert await connected() >= 2  # the reading connection and a command one
        await asyncio.wait_for(backend.close(), 5)
        with contextlib.suppress(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        for _ in range(50):  # the server notices closed sockets on its next event loop turn
            if await connected() == 0:
                break
            await asyncio.sleep(0.05)
        assert await connected() == 0, "a connection stayed open after close()"
    finally:
        await admin.aclose()


async def test_an_encrypted_client_key_needs_its_password_and_never_prompts(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles, make_backend: Make
) -> None:
    """Without ?ssl_password=, OpenSSL's default would ask for it on the terminal."""
    server = redis_server_factory(tls=tls_files, tls_client_auth=True)
    encrypted = tls_files.encrypted_client_key("k3y;s3cret")
    files = {"tls_ca_file": tls_files.ca_cert, "tls_cert_file": tls_files.client_cert}
    environ = {"REDIS_URL": server.url, "REDIS_TLS_KEY_FILE": str(encrypted)}
    environ.update(REDIS_TLS_CA_FILE=str(tls_files.ca_cert))
    environ.update(REDIS_TLS_CERT_FILE=str(tls_files.client_cert))
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env(environ)
    assert refused.value.variables == ("REDIS_TLS_CERT_FILE",)
    assert "?ssl_password=" in str(refused.value)
    if "password" not in inspect.signature(RedisSSLContext).parameters:
        return  # this redis-py takes no key password (6.x added it): refused is all it can do
    url = f"{server.url}?ssl_password={quote('k3y;s3cret')}"
    backend = make_backend(url, tls_key_file=encrypted, **files)
    key = unique("encrypted-key")
    await backend.publish(key, {"n": 1})
    async with backend.subscribe(group="g", keys=[key]) as subscription:
        delivery = await next_delivery(subscription)
        assert delivery.payload == {"n": 1}
        await delivery.ack()
