"""Hostile input and secrets on real NATS servers (issue 18).

Credentials never cross the network in clear text when TLS was asked for (a recording
proxy sees every byte the client sends).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import nkeys
import pytest
from abe_brokers import NatsServerFactory, TlsFiles
from abe_brokers.proxy import RecordingProxy
from abe_mq_nats_testing import environment

from abe.errors import BackendUnavailableError
from abe.testing import unique
from abe.testing.helpers import eventually
from abe_mq_nats import NatsBackend

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
