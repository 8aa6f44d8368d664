"""A TCP proxy for tests that must see the bytes a client library puts on the wire.

The contract's TLS test puts it between a backend and a real plaintext broker: the broker
answers as it would, and the recording shows whether a credential crossed the wire.

``RecordingProxy`` listens on a free loopback port, forwards every connection to one
upstream server, both ways and unchanged, and records what each side sent. A test
points a backend at the proxy instead of the broker and then asserts on ``sent``: that
a secret never left the process in clear text, or that a refused message was never
written at all. It works for any TCP protocol (NATS, Redis, Kafka, HTTP), since it only
copies bytes; what a client sends inside TLS is recorded encrypted, as an eavesdropper
would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["RecordingProxy"]

_CHUNK = 65536


class RecordingProxy:
    """Forwards ``host:port`` on a free loopback port; records the bytes of every connection.

    Use it as ``async with RecordingProxy(host, port) as proxy:`` and connect to
    ``proxy.host:proxy.port``. Bytes are recorded before they are forwarded, so whatever
    the server answered to is already in ``sent``; ``await proxy.quiet()`` waits until
    every client closed its side, after which ``sent`` holds all it will ever hold.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        """Where new connections are forwarded (may be changed while the proxy runs)."""
        self.host = "127.0.0.1"
        self.port = 0
        self.from_clients: list[bytearray] = []
        """What each accepted connection's client sent, in order of acceptance."""
        self.from_server: list[bytearray] = []
        """What the upstream server sent on each connection."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._client_done: list[asyncio.Event] = []

    @property
    def connections(self) -> int:
        """How many client connections the proxy accepted."""
        return len(self.from_clients)

    @property
    def sent(self) -> bytes:
        """Every byte clients sent, all connections one after another."""
        return b"".join(bytes(chunk) for chunk in self.from_clients)

    @property
    def received(self) -> bytes:
        """Every byte the upstream server sent back, all connections one after another."""
        return b"".join(bytes(chunk) for chunk in self.from_server)

    async def start(self) -> RecordingProxy:
        """Listen on a free loopback port (``self.port``)."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def quiet(self, timeout: float = 10.0) -> None:
        """Wait until every client connection so far was closed by its client (or upstream)."""
        events = list(self._client_done)
        if events:
            waits = [asyncio.ensure_future(event.wait()) for event in events]
            try:
                _, pending = await asyncio.wait(waits, timeout=timeout)
            finally:
                for wait in waits:
                    wait.cancel()
            if pending:
                raise AssertionError(
                    f"{len(pending)} of {len(events)} proxied connections still open after "
                    f"{timeout:g}s"
                )

    async def cut(self) -> None:
        """Drop every proxied connection, as a network failure would; new ones are accepted.

        Set ``upstream`` first to send the connections that follow somewhere else.
        """
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop listening and cut every proxied connection."""
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RecordingProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent, answered, done = bytearray(), bytearray(), asyncio.Event()
        self.from_clients.append(sent)
        self.from_server.append(answered)
        self._client_done.append(done)
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            done.set()
            return
        self._writers.add(upstream_writer)
        to_server = asyncio.ensure_future(_pump(reader, upstream_writer, sent, done))
        to_client = asyncio.ensure_future(_pump(upstream_reader, writer, answered, None))
        self._tasks.update((to_server, to_client))
        to_server.add_done_callback(self._tasks.discard)
        to_client.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait((to_server, to_client), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_server, to_client):
                task.cancel()
            await asyncio.gather(to_server, to_client, return_exceptions=True)
            for side in (writer, upstream_writer):
                side.close()
                self._writers.discard(side)
            done.set()


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    record: bytearray,
    done: asyncio.Event | None,
) -> None:
    """Copy bytes from `reader` to `writer`, recording each chunk before it is forwarded."""
    try:
        while True:
            try:
                chunk = await reader.read(_CHUNK)
            except (ConnectionError, OSError):
                return
            if not chunk:
                return
            record += chunk
            writer.write(chunk)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                return
    finally:
        if done is not None:
            done.set()
