"""A TCP forwarder that records what a client sends, to prove what never leaves the process.

The contract's TLS test puts it between a backend and a real plaintext broker: the broker
answers as it would, and the recording shows whether a credential crossed the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["RecordingProxy"]


class RecordingProxy:
    """Listens on 127.0.0.1, forwards each connection to `host:port`, keeps the client's bytes.

    async with RecordingProxy("127.0.0.1", 4222) as proxy:
        ...connect a client to 127.0.0.1:proxy.port...
    assert b"secret" not in proxy.sent_bytes
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._sent = bytearray()
        self.connections = 0
        """How many connections clients opened through the proxy."""

    @property
    def port(self) -> int:
        """The loopback port clients connect to."""
        assert self._server is not None, "use the proxy inside `async with`"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def sent_bytes(self) -> bytes:
        """Everything every client sent through the proxy so far, in arrival order."""
        return bytes(self._sent)

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.add(client_out)
        try:
            broker_in, broker_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.close()
            return
        self._writers.add(broker_out)
        upstream = asyncio.ensure_future(self._pump(client_in, broker_out, record=True))
        downstream = asyncio.ensure_future(self._pump(broker_in, client_out, record=False))
        for task in (upstream, downstream):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(upstream, downstream, return_exceptions=True)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, record: bool
    ) -> None:
        try:
            while chunk := await source.read(65536):
                if record:
                    self._sent += chunk
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
