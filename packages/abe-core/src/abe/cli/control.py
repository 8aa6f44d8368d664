"""The line protocol between the `abe run --workers` supervisor and each worker process.

One socket pair per worker, the worker's end passed as a file descriptor (`--control-fd`).

    supervisor -> worker   stop          stop taking messages, finish, exit 0 (a first signal)
                           now SIGNUM    stop at once, exit 128 + SIGNUM (a second signal)
                           status        answer with the readiness below
    worker -> supervisor   started       once, when it has joined its group on the broker
                           ready | unready REASON    the answer to `status`

The supervisor asks with a line rather than a signal so that a worker can tell the
supervisor's first stop from its second even when a service manager signals every process
itself. A worker whose supervisor dies sees the end of the stream and stops gracefully,
so no worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from abe.backends.message_queue.base.deadlines import bounded

__all__ = ["SupervisorLink", "WorkerChannel"]

log = logging.getLogger("abe.run")

_LINE_LIMIT = 4096


class WorkerChannel:
    """The supervisor's end of one worker's socket: send orders, hear `started`, ask status."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_started: Callable[[], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_started = on_started
        self._answers: asyncio.Queue[str] = asyncio.Queue()
        self._asking = asyncio.Lock()
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    @classmethod
    async def open(cls, sock: socket.socket, on_started: Callable[[], None]) -> WorkerChannel:
        """Wrap the supervisor's end of a socket pair."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        return cls(reader, writer, on_started)

    async def _listen(self) -> None:
        while (line := await _read_line(self._reader)) is not None:
            if not line:
                continue
            if line == "started":
                self._on_started()
            else:
                self._answers.put_nowait(line)

    def send(self, order: str) -> None:
        """Send one order line; a worker that is already gone is not an error."""
        if self._writer.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.write(f"{order}\n".encode())

    async def status(self, timeout: float) -> str:
        """`ready`, or why not: the worker's answer, or that it did not answer in time."""
        async with self._asking:
            while not self._answers.empty():  # a late answer to an earlier question
                self._answers.get_nowait()
            self.send("status")
            try:
                return await bounded(self._answers.get(), timeout)
            except asyncio.TimeoutError:
                return f"unready: no answer within {timeout:g}s"

    async def close(self) -> None:
        """Stop listening and close the socket."""
        self._listener.cancel()
        await asyncio.gather(self._listener, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()


class SupervisorLink:
    """The worker's end: obeys `stop` and `now`, answers `status`, says `started` once."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        stop: Callable[[str], None],
        now: Callable[[int], None],
        status: Callable[[], str],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._stop = stop
        self._now = now
        self._status = status
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    @classmethod
    async def open(
        cls,
        fd: int,
        *,
        stop: Callable[[str], None],
        now: Callable[[int], None],
        status: Callable[[], str],
    ) -> SupervisorLink:
        """Take over the descriptor the supervisor passed (`--control-fd`)."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        return cls(reader, writer, stop=stop, now=now, status=status)

    async def _listen(self) -> None:
        while (line := await _read_line(self._reader)) is not None:
            order, _, argument = line.partition(" ")
            if not order:
                continue
            if order == "stop":
                self._stop("asked by the supervisor")
            elif order == "now" and argument.isdigit():
                self._now(int(argument))
            elif order == "status":
                self._say(self._status())
            else:
                log.warning("ignoring an unknown order from the supervisor: %r", line[:80])
        self._stop("the supervisor is gone")

    def _say(self, line: str) -> None:
        if not self._writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(f"{line}\n".encode())

    def started(self) -> None:
        """Tell the supervisor this worker has joined its group on the broker."""
        self._say("started")

    async def close(self) -> None:
        """Stop listening and close the socket."""
        self._listener.cancel()
        await asyncio.gather(self._listener, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()


async def _read_line(reader: asyncio.StreamReader) -> str | None:
    """The next line without its newline; None at the end of the stream or on a broken one."""
    try:
        raw = await reader.readline()
    except (OSError, ValueError, asyncio.LimitOverrunError):
        return None
    return raw.decode("utf-8", "replace").strip() if raw else None
