"""Checks that an address really is a usable broker of a kind, each bounded in time.

Two strengths: cheap raw-protocol probes (NATS ``INFO``, Kafka ``ApiVersions``) used to
poll a starting process, and full client round trips (redis-py, nats-py JetStream,
aiokafka metadata, botocore SQS) used to vet an address before tests rely on it. All
are synchronous; async clients run on a private loop in a helper thread, so the probes
work from fixtures and from inside a running event loop alike.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class ProbeError(RuntimeError):
    """The address answered, but not as a usable broker of the expected kind."""


def run_in_thread(func: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run coroutine ``func()`` with ``asyncio.run`` in a fresh thread, at most ``timeout`` s."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        async def bounded() -> T:
            return await asyncio.wait_for(func(), timeout)

        try:
            result.append(asyncio.run(bounded()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="abe-broker-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if thread.is_alive():
        raise TimeoutError(f"probe still running after {timeout + 5.0:.0f}s")
    if error:
        raise error[0]
    return result[0]


# --- Redis ---------------------------------------------------------------------------


def probe_redis(url: str, *, timeout: float = 2.0, **redis_kwargs: Any) -> str:
    """PING ``url`` with redis-py and check it has streams (5.0+); return the server version."""
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, **redis_kwargs
    )
    try:
        if not client.ping():
            raise ProbeError("PING did not answer PONG")
        info: dict[str, Any] = client.info("server")
    finally:
        client.close()
    version = str(info.get("redis_version", "0"))
    major = int(version.split(".", maxsplit=1)[0] or 0)
    if major < 5:
        raise ProbeError(f"Redis {version} has no streams (5.0+ needed)")
    return version


# --- NATS ----------------------------------------------------------------------------


def nats_info(host: str, port: int, timeout: float = 1.0) -> dict[str, Any]:
    """The ``INFO`` a NATS server sends on connect (in clear text, even when TLS follows)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        data = b""
        while b"\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ProbeError(f"not a NATS server (first line {line[:60]!r})")
    info: dict[str, Any] = json.loads(line[5:])
    return info


def nats_ready_jetstream(host: str, port: int) -> None:
    """Readiness for a server we started: it sends INFO and announces JetStream."""
    if not nats_info(host, port).get("jetstream"):
        raise ProbeError("NATS answered but JetStream is not enabled")


def probe_nats(url: str, *, timeout: float = 3.0, tls: ssl.SSLContext | None = None) -> str:
    """Connect with nats-py and ask JetStream for the account info; return the server version."""
    import nats
    from nats.js.errors import ServiceUnavailableError

    async def check() -> str:
        nc = await nats.connect(
            url,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            tls=tls,
        )
        try:
            try:
                await nc.jetstream(timeout=timeout).account_info()
            except ServiceUnavailableError as exc:
                raise ProbeError("NATS answered but JetStream is not enabled") from exc
            version = nc.connected_server_version
            return f"{version.major}.{version.minor}.{version.patch}"
        finally:
            await nc.close()

    return run_in_thread(check, timeout * 2)


# --- Kafka ---------------------------------------------------------------------------


def kafka_api_versions(host: str, port: int, timeout: float = 1.0) -> dict[int, tuple[int, int]]:
    """Send a raw ApiVersions v0 request; return ``{api_key: (min, max)}`` as the broker states."""
    client_id = b"abe-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = _recv_exact(sock, 4)
        (size,) = struct.unpack(">i", header)
        payload = _recv_exact(sock, size)
    correlation, error, count = struct.unpack(">ihi", payload[:10])
    if correlation != 7:
        raise ProbeError(f"not a Kafka broker (correlation id {correlation})")
    if error != 0:
        raise ProbeError(f"ApiVersions error code {error}")
    versions: dict[int, tuple[int, int]] = {}
    for i in range(count):
        key, low, high = struct.unpack(">hhh", payload[10 + 6 * i : 16 + 6 * i])
        versions[key] = (low, high)
    return versions


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProbeError("connection closed mid-response (not a Kafka broker?)")
        data += chunk
    return data


def probe_kafka(bootstrap: str, *, timeout: float = 5.0) -> str:
    """Bootstrap aiokafka and connect to an advertised broker; return the advertised addresses.

    Reaching the bootstrap port is not enough: clients then use the advertised listeners,
    which must be reachable from here too.
    """
    from aiokafka.client import AIOKafkaClient  # type: ignore[import-untyped]

    async def check() -> str:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await client.bootstrap()
            brokers = client.cluster.brokers()
            if not brokers:
                raise ProbeError("metadata lists no brokers")
            advertised = sorted(f"{b.host}:{b.port}" for b in brokers)
            node = next(iter(brokers)).nodeId
            if not await client.ready(node):
                raise ProbeError(f"advertised broker {advertised} is not reachable from here")
            return ",".join(advertised)
        finally:
            await client.close()

    return run_in_thread(check, timeout * 2)


# --- SQS / S3 (moto, LocalStack) -----------------------------------------------------


def botocore_client(
    service: str,
    endpoint_url: str,
    *,
    region: str = "us-east-1",
    access_key_id: str = "testing",
    secret_access_key: str = "testing",
    timeout: float = 3.0,
) -> Any:
    """A synchronous botocore client with short timeouts and no retries, for probing and setup."""
    import botocore.session  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    session = botocore.session.get_session()
    return session.create_client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 0}),
    )


def probe_sqs(
    endpoint_url: str,
    *,
    region: str = "us-east-1",
    access_key_id: str = "testing",
    secret_access_key: str = "testing",
    timeout: float = 3.0,
) -> None:
    """A real ``ListQueues`` call: the endpoint must answer as SQS, not just accept TCP."""
    split = urlsplit(endpoint_url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ProbeError(f"not an http(s) endpoint URL: {endpoint_url!r}")
    client = botocore_client(
        "sqs",
        endpoint_url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        timeout=timeout,
    )
    try:
        response = client.list_queues()
    finally:
        client.close()
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 200:
        raise ProbeError(f"ListQueues answered {response.get('ResponseMetadata')}")


# --- RabbitMQ ------------------------------------------------------------------------


def probe_rabbitmq(url: str, *, timeout: float = 3.0) -> str:
    """Connect with aio-pika and open a channel; return the server's version."""
    import aio_pika

    async def check() -> str:
        connection = await aio_pika.connect(url, timeout=timeout)
        try:
            await connection.channel()
            properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
            version = properties.get("version", b"?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            await connection.close()

    return run_in_thread(check, timeout)
