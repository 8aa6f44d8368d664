"""Fixtures of abe-mq-sqs's integration tests: backends on the session's SQS endpoint and more.

- `sqs_settings` builds `SqsSettings` for the session endpoint (`sqs_broker`).
- `raw_sqs` is a plain aiobotocore client on it, for interop and poison bodies.
- `sqs_outage` puts a TCP proxy in front of the endpoint that a test can cut and
  restore: the endpoint goes away (connections refused, the ones open reset) and comes
  back with its messages, which is what an SQS client sees when SQS is unreachable.
- `moto_factory` starts moto servers a test owns and can restart (state is lost: moto
  keeps it in memory) or run with authentication switched on.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from abe_brokers import MotoServer, SqsBroker, free_port
from abe_brokers.procs import ManagedProcess, base_env, port_open

from abe.settings import Secret
from abe_mq_sqs import SqsSettings

REDELIVERY = 2.0
"""The contract wants 1 to 3 s; SQS's visibility timeout is whole seconds."""

SettingsFactory = Callable[..., SqsSettings]


def settings_for(endpoint: str, broker: SqsBroker, **overrides: Any) -> SqsSettings:
    """Settings reaching `endpoint` with the broker's region and test credentials."""
    values: dict[str, Any] = {
        "region": broker.region,
        "endpoint_url": endpoint,
        "access_key_id": Secret(broker.access_key_id),
        "secret_access_key": Secret(broker.secret_access_key),
        "redelivery_timeout": REDELIVERY,
        "operation_timeout": 10.0,
        "connect_timeout": 2.0,
    }
    values.update(overrides)
    return SqsSettings(**values)


@pytest.fixture
def sqs_settings(sqs_broker: SqsBroker) -> SettingsFactory:
    """Settings for the session's SQS endpoint; keyword arguments override fields."""

    def build(**overrides: Any) -> SqsSettings:
        return settings_for(sqs_broker.endpoint_url, sqs_broker, **overrides)

    return build


@pytest_asyncio.fixture
async def raw_sqs(sqs_broker: SqsBroker) -> AsyncIterator[Any]:
    """A plain aiobotocore SQS client on the session endpoint."""
    from aiobotocore.session import get_session

    async with get_session().create_client("sqs", **sqs_broker.client_kwargs()) as client:
        yield client


class TcpProxy:
    """A loopback TCP proxy, in threads of its own, that can be cut and restored.

    `cut()` closes the listening socket and every connection through it (clients see
    resets, then refused connections); `restore()` listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def sqs_outage(sqs_broker: SqsBroker) -> Iterator[TcpProxy]:
    """A proxy to the session endpoint that the test can cut and restore (started)."""
    from urllib.parse import urlsplit

    target = urlsplit(sqs_broker.endpoint_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80)
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()


class MotoFactory:
    """moto servers a test owns: restartable (state is lost) or with authentication on."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._servers: list[MotoServer | ManagedProcess] = []

    def plain(self) -> MotoServer:
        server = MotoServer(self.directory / f"moto-{len(self._servers)}")
        self._servers.append(server)
        server.start()
        return server

    def with_authentication(self) -> str:
        """A moto server that checks every request's credentials; its endpoint URL."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        def ready() -> None:
            if not port_open("127.0.0.1", port):
                raise ConnectionRefusedError(port)

        process = ManagedProcess(
            f"moto (authentication on) on port {port}",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            log_path=self.directory / f"moto-auth-{port}.log",
            ready=ready,
            env=base_env(INITIAL_NO_AUTH_ACTION_COUNT="0"),
            start_timeout=60.0,
        )
        self._servers.append(process)
        process.start()
        return url

    def close(self) -> None:
        for server in self._servers:
            server.kill()


@pytest.fixture
def moto_factory(tmp_path: Path) -> Iterator[MotoFactory]:
    """Make moto servers owned by this test; all killed after it."""
    pytest.importorskip("moto", reason="moto[server] is needed for test-owned SQS endpoints")
    factory = MotoFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def auth_moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server with authentication on, shared by the tests that need refusals."""
    pytest.importorskip("moto", reason="moto[server] is needed for test-owned SQS endpoints")
    factory = MotoFactory(tmp_path_factory.mktemp("moto-auth"))
    try:
        yield factory.with_authentication()
    finally:
        factory.close()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint URL whose port listens but never accepts: requests get no answer at all."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def closed_endpoint() -> str:
    """An endpoint URL on a loopback port where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"
