"""Hostile input and secrets on real NATS servers (issue 18).

Credentials never cross the network in clear text when TLS was asked for; JetStream
control headers (`Nats-*`) never reach the server from user headers nor from a dead
letter's copy of a foreign message; bad header values and oversized messages are
PayloadErrors before anything is sent; a refused credential shows in no log record (DEBUG
on every logger), repr or error. A recording proxy sees every byte the client sends.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nkeys
import pytest
from abe_brokers import NatsServerFactory, TlsFiles
from abe_mq_nats_testing import Janitor, environment, raw_client, settings_for
from nats.aio.msg import Msg

from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadError,
)
from abe.testing import RecordingProxy, unique
from abe.testing.helpers import eventually, next_delivery, receive_payloads
from abe_mq_nats import NatsBackend, NatsSettings

pytestmark = pytest.mark.asyncio

TIMEOUT = 3.0
"""ABE_MQ_OPERATION_TIMEOUT of these tests: refusals must come well before it."""


def from_env(**env: str) -> NatsBackend:
    with environment({"ABE_MQ_OPERATION_TIMEOUT": str(TIMEOUT), **env}):
        return NatsBackend.from_env()


def nkey_pair() -> tuple[str, str]:
    """A new user NKey: (seed, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    return seed, nkeys.from_seed(bytearray(seed.encode())).public_key.decode()


# --- credentials stay home when TLS was asked for and not offered ----------------------------


@pytest.mark.parametrize(
    "credentials",
    ["token in the URL", "user and password in the URL", "NATS_TOKEN", "NATS_NKEY_SEED"],
)
async def test_credentials_never_leave_unencrypted(
    credentials: str, nats_server_factory: NatsServerFactory, tmp_path: Path
) -> None:
    """A plain-text server (or someone posing as the server) never gets a credential."""
    token, password = "tls-token-5e1f", "tls/pass word-8c"
    seed, public = nkey_pair()
    env: dict[str, str] = {}
    if credentials == "token in the URL":
        server = nats_server_factory(token=token)
        userinfo, secrets = f"{token}@", [token]
    elif credentials == "user and password in the URL":
        server = nats_server_factory(user="abe", password=password)
        userinfo, secrets = f"abe:{quote(password, safe='')}@", [password, quote(password)]
    elif credentials == "NATS_TOKEN":
        server = nats_server_factory(token=token)
        userinfo, secrets, env = "", [token], {"NATS_TOKEN": token}
    else:
        config = tmp_path / "nkey.conf"
        config.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
        server = nats_server_factory(extra_args=["-c", str(config)])
        # The seed never leaves in any case; what CONNECT would carry is the key and a signature.
        userinfo, secrets, env = "", [seed, public, '"sig"'], {"NATS_NKEY_SEED": seed}
    async with RecordingProxy(server.host, server.port) as proxy:
        backend = from_env(NATS_URL=f"tls://{userinfo}{proxy.host}:{proxy.port}", **env)
        started = time.monotonic()
        try:
            with pytest.raises(BackendUnavailableError) as failed:
                await backend.publish(unique("tls"), {"x": 1})
        finally:
            await backend.close()
        elapsed = time.monotonic() - started
        await proxy.quiet()
    assert b"INFO " in proxy.received, "the server was reached and spoke first"
    for secret in secrets:
        assert secret.encode() not in proxy.sent, f"{secret!r} crossed the network in clear text"
    assert b"CONNECT" not in proxy.sent, "nothing at all is sent to a server without TLS"
    text = str(failed.value)
    assert "TLS was asked for" in text
    assert "did not offer it" in text
    assert "NATS_URL" in text, "says what to change"
    assert "NATS_TLS_" in text, "says what to change"
    assert all(secret not in text for secret in secrets)
    assert elapsed < TIMEOUT, "refused at once, not after the operation timeout"


async def test_a_reconnection_without_tls_sends_nothing(
    nats_server_factory: NatsServerFactory,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that stops offering TLS after a restart (or an impostor) gets no credential."""
    token = "tls-reconnect-2b9d"
    encrypted = nats_server_factory(token=token, tls=tls_files)
    plain = nats_server_factory(token=token)
    async with RecordingProxy(encrypted.host, encrypted.port) as proxy:

        def later() -> bytes:  # what the client sent after the first connection was cut
            return b"".join(bytes(chunk) for chunk in proxy.from_clients[1:])

        backend = from_env(
            NATS_URL=f"tls://{token}@{proxy.host}:{proxy.port}",
            NATS_TLS_CA=str(tls_files.ca_cert),
            ABE_NATS_RECONNECT_WAIT="0.05",
        )
        try:
            await backend.publish(unique("tls"), {"x": 1})  # over TLS: the token is encrypted
            assert token.encode() not in proxy.sent
            caplog.set_level(logging.WARNING, logger="abe.nats")
            proxy.upstream = (plain.host, plain.port)
            await proxy.cut()
            await eventually(
                lambda: proxy.connections >= 4 or b"CONNECT" in later(),
                what="reconnection attempts on the plain server",
            )
        finally:
            await backend.close()
        await proxy.quiet()
    assert token.encode() not in proxy.sent
    assert b"CONNECT" not in later(), "nothing is sent on a connection that stayed plain"
    assert any("did not offer TLS" in record.getMessage() for record in caplog.records)


# --- JetStream control headers -----------------------------------------------------------


async def stored(url: str, stream: str) -> int:
    """How many messages `stream` holds."""
    async with raw_client(url) as (_, js):
        return (await js.stream_info(stream)).state.messages


async def read_raw(url: str, stream: str, subject: str, count: int) -> list[Msg]:
    """The first `count` messages of `subject`, read by a plain JetStream consumer."""
    async with raw_client(url) as (_, js):
        subscription = await js.pull_subscribe(subject, durable=unique("raw"), stream=stream)
        messages = await subscription.fetch(count, timeout=10)
        for message in messages:
            await message.ack()
    return messages


async def rollup_stream(url: str, janitor: Janitor, *subjects: str) -> str:
    """An operator's stream on `subjects` that honours Nats-Rollup (purges on request)."""
    name = unique("rollup")
    async with raw_client(url) as (_, js):
        await js.add_stream(name=name, subjects=list(subjects), allow_rollup_hdrs=True)
    janitor.streams.add(name)
    return name


@pytest.mark.parametrize(
    "headers",
    [
        {"Nats-Rollup": "sub"},
        {"Nats-Rollup": "all"},
        {"Nats-Expected-Last-Sequence": "1"},
        {"nats-msg-id": "chosen-id"},
        {"trace": "t", "NATS-Expected-Stream": "elsewhere"},
    ],
)
async def test_jetstream_control_headers_are_refused(
    headers: dict[str, str], nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    key = unique("control")
    stream = await rollup_stream(nats_broker.url, nats_janitor, key)
    backend = make_backend(stream=stream)
    await backend.publish_many(key, [{"n": n} for n in range(3)])
    with pytest.raises(PayloadError, match="which a broker acts on"):
        await backend.publish(key, {"n": 99}, headers=headers)
    with pytest.raises(PayloadError, match="which a broker acts on"):
        await backend.publish_many(key, [{"n": 98}, {"n": 99}], headers=headers)
    assert await stored(nats_broker.url, stream) == 3, "nothing purged, nothing added"
    got = await receive_payloads(backend, [key], unique("group"), 3)
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_a_dead_letter_drops_a_foreign_messages_control_headers(
    nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    """A producer allowed on `key` cannot purge `key-dlq` by having its message dead-lettered."""
    key = unique("control")
    dead = f"{key}-dlq"
    stream = await rollup_stream(nats_broker.url, nats_janitor, key, dead)
    backend = make_backend(stream=stream)
    await backend.publish_many(dead, [{"earlier": 1}, {"earlier": 2}])
    async with raw_client(nats_broker.url) as (_, js):
        await js.publish(key, b'{"poison": true}', headers={"Nats-Rollup": "sub", "trace": "t"})
    async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
        delivery = await next_delivery(subscription)
        assert delivery.headers["Nats-Rollup"] == "sub", "the foreign header was delivered"
        await delivery.dead_letter("cannot handle poison")
    assert await stored(nats_broker.url, stream) == 4, "the earlier dead letters are kept"
    letters = await read_raw(nats_broker.url, stream, dead, 3)
    assert [json.loads(letter.data) for letter in letters] == [
        {"earlier": 1},
        {"earlier": 2},
        {"poison": True},
    ]
    headers = letters[2].headers or {}
    assert "Nats-Rollup" not in headers
    assert headers["trace"] == "t"
    assert headers["abe-error"] == "cannot handle poison"


# --- header values and sizes -----------------------------------------------------------------


async def test_a_lone_surrogate_in_a_header_value_is_a_payload_error(
    nats_broker: Any, make_backend: Any
) -> None:
    backend = make_backend()
    key = unique("surrogate")
    await backend.publish(key, {"n": 1})
    with pytest.raises(PayloadError, match="'note' has a value that is not valid Unicode"):
        await backend.publish(key, {"n": 2}, headers={"note": "half \ud800 a pair"})
    with pytest.raises(PayloadError, match="'note' has a value that is not valid Unicode"):
        await backend.publish_many(key, [{"n": 3}], headers={"note": "\udfff"})
    assert await stored(nats_broker.url, backend._jetstream.streams[key].name) == 1
    client = backend._jetstream.client
    assert client is not None
    assert client.is_connected, "the connection is unharmed"


async def test_a_dead_letter_reason_with_a_lone_surrogate_arrives_as_valid_text(
    nats_broker: Any, make_backend: Any
) -> None:
    backend = make_backend()
    key = unique("surrogate")
    await backend.publish(key, {"n": 1})
    async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
        delivery = await next_delivery(subscription)
        await delivery.dead_letter("broken \ud800 reason\nsecond line")
    dead = f"{key}-dlq"
    [letter] = await read_raw(nats_broker.url, backend._jetstream.streams[dead].name, dead, 1)
    reason = (letter.headers or {})["abe-error"]
    reason.encode("utf-8")  # valid text: no lone surrogate left
    assert "\ufffd" not in reason, "not garbled in transit"
    assert reason.startswith("broken ")
    assert reason.endswith("reason second line"), "one line"
    assert json.loads(letter.data) == {"n": 1}


async def test_a_message_the_server_would_refuse_for_size_is_never_sent(
    nats_server_factory: NatsServerFactory, tmp_path: Path
) -> None:
    """Body plus every header against max_payload, and 4 KiB of user headers, before any I/O."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 32768\n")
    server = nats_server_factory(extra_args=["-c", str(config)])
    async with RecordingProxy(server.host, server.port) as proxy:
        backend = NatsBackend(
            settings_for(f"nats://{proxy.host}:{proxy.port}", operation_timeout=TIMEOUT)
        )
        key = unique("size")
        try:
            await backend.publish(key, {"first": True})  # connected: max_payload is known
            largest = {"blob": "x" * (backend.max_payload_bytes - len('{"blob":""}'))}
            marker = uuid.uuid4().hex
            headers = {"h": marker + "y" * (4000 - len(marker))}
            with pytest.raises(PayloadError, match=r"with its headers, over .* of 32,768"):
                await backend.publish(key, largest, headers=headers)
            with pytest.raises(PayloadError, match=r"payloads\[1\] is .* with its headers"):
                await backend.publish_many(key, [{"n": 1}, largest], headers=headers)
            many = {f"h{n}": marker + "y" * 68 for n in range(1000)}  # 1,000 x 100 bytes
            with pytest.raises(PayloadError, match="over the limit of 4,096"):
                await backend.publish(key, {"n": 2}, headers=many)
            assert marker.encode() not in proxy.sent, "nothing of the refused messages was sent"
            await backend.publish(key, largest)  # the connection is unharmed
            got = await receive_payloads(backend, [key], unique("group"), 2)
            assert got == [{"first": True}, largest]
        finally:
            await backend.close()


async def test_a_dead_letter_over_jetstreams_header_limit_is_a_payload_error(
    nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    """A foreign message with 63 KB of headers: its dead letter would exceed the 64 KiB."""
    key = unique("size")
    stream = unique("big-headers")
    marker = uuid.uuid4().hex
    async with raw_client(nats_broker.url) as (_, js):
        await js.add_stream(name=stream, subjects=[key])
        nats_janitor.streams.add(stream)
        foreign = {f"h{n:03}": marker + "v" * 68 for n in range(600)}  # 64,812 bytes
        foreign["pad"] = "p" * 681  # 65,500 of the 65,535 JetStream stores
        await js.publish(key, b'{"n": 1}', headers=foreign)
    async with RecordingProxy(nats_broker.host, nats_broker.port) as proxy:
        settings = settings_for(f"nats://{proxy.host}:{proxy.port}", operation_timeout=TIMEOUT)
        backend = nats_janitor.track(NatsBackend(settings))
        try:
            async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
                delivery = await next_delivery(subscription)
                assert marker in delivery.headers["h000"]
                with pytest.raises(PayloadError, match="bytes of NATS headers, over the 65,535"):
                    await delivery.dead_letter("too much")
        finally:
            await backend.close()
    assert marker.encode() in proxy.received, "the foreign message came through the proxy"
    assert marker.encode() not in proxy.sent, "the letter was not sent"
    assert f"{key}-dlq" not in backend._jetstream.streams, "not even its stream was created"


# --- secrets ---------------------------------------------------------------------------------


@pytest.fixture
def every_record() -> Iterator[list[str]]:
    """Every log record of every logger at DEBUG, formatted with its traceback."""
    formatted: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    names = {"nats", "nats.aio", "nats.aio.client", "nats.js", "asyncio", "abe", "abe.nats"}
    names.update(logging.Logger.manager.loggerDict)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in sorted(names))]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    logging.getLogger().addHandler(handler)
    try:
        yield formatted
    finally:
        logging.getLogger().removeHandler(handler)
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled


@pytest.mark.parametrize(
    "case",
    [
        "token in the URL",
        "NATS_TOKEN",
        "password in the URL",
        "NATS_PASSWORD",
        "NKey seed",
        "NKey seed file",
    ],
)
async def test_a_refused_secret_shows_nowhere(
    case: str,
    nats_server_factory: NatsServerFactory,
    tmp_path: Path,
    every_record: list[str],
) -> None:
    """Wrong credentials on an auth-enabled server: the error, reprs and logs keep them."""
    wrong = "wr0ng/s3cret:tok@n%"  # characters that get percent-encoded or escaped
    seed = nkey_pair()[0]
    if case in ("token in the URL", "NATS_TOKEN"):
        server = nats_server_factory(token="the-right-token-3a")
    elif case in ("password in the URL", "NATS_PASSWORD"):
        server = nats_server_factory(user="abe", password="the-right-password-3a")
    else:
        config = tmp_path / "nkey.conf"
        config.write_text(f"authorization {{ users = [ {{ nkey: {nkey_pair()[1]} }} ] }}\n")
        server = nats_server_factory(extra_args=["-c", str(config)])
    address = f"{server.host}:{server.port}"
    secrets = [wrong, quote(wrong, safe=""), quote(wrong)]
    env = {
        "token in the URL": {"NATS_URL": f"nats://{quote(wrong, safe='')}@{address}"},
        "NATS_TOKEN": {"NATS_URL": f"nats://{address}", "NATS_TOKEN": wrong},
        "password in the URL": {"NATS_URL": f"nats://abe:{quote(wrong, safe='')}@{address}"},
        "NATS_PASSWORD": {
            "NATS_URL": f"nats://{address}",
            "NATS_USER": "abe",
            "NATS_PASSWORD": wrong,
        },
        "NKey seed": {"NATS_URL": f"nats://{address}", "NATS_NKEY_SEED": seed},
        "NKey seed file": {"NATS_URL": f"nats://{address}", "NATS_NKEY_SEED": str(tmp_path)},
    }[case]
    if case.startswith("NKey"):
        secrets = [seed]
    if case == "NKey seed file":
        (tmp_path / "user.nk").write_text(seed)
        env["NATS_NKEY_SEED"] = str(tmp_path / "user.nk")
    backend = from_env(**env)
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationError) as failed:
            await backend.publish(unique("auth"), {"x": 1})
    finally:
        await backend.close()
    assert time.monotonic() - started < TIMEOUT, "refused at once"
    assert any("abe.nats" in record for record in every_record), "DEBUG records were captured"
    shown = {
        "the error": str(failed.value),
        "the error's repr": repr(failed.value),
        "the traceback": "".join(traceback.format_exception(failed.value)),
        "repr(backend)": repr(backend),
        "repr(settings)": repr(backend.settings),
        **{f"log record {n}": record for n, record in enumerate(every_record)},
    }
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"{where} shows the secret: {text[:500]}"
    assert address in str(failed.value), "the error still says which server"


async def test_an_encrypted_client_key_loads_with_its_password_and_never_prompts(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without NATS_TLS_KEY_PASSWORD, OpenSSL's default would ask for it on the terminal."""
    encrypted = tls_files.encrypted_client_key("k3y-s3cret")
    monkeypatch.setenv("NATS_TLS_CA", str(tls_files.ca_cert))
    monkeypatch.setenv("NATS_TLS_CERT", str(tls_files.client_cert))
    monkeypatch.setenv("NATS_TLS_KEY", str(encrypted))
    with pytest.raises(ConfigurationError) as refused:
        NatsSettings.from_env()
    assert refused.value.variables == ("NATS_TLS_CERT",)
    assert "NATS_TLS_KEY_PASSWORD" in str(refused.value)
    monkeypatch.setenv("NATS_TLS_KEY_PASSWORD", "wrong")
    with pytest.raises(ConfigurationError):
        NatsSettings.from_env()
    monkeypatch.setenv("NATS_TLS_KEY_PASSWORD", "k3y-s3cret")
    settings = NatsSettings.from_env()
    assert settings.tls_context() is not None
    assert "k3y-s3cret" not in repr(settings)
