"""The small HTTP endpoint of `abe run --metrics-port`: /metrics, /healthz and /readyz.

It answers GET and HEAD, one request per connection, on the event loop of the process
that serves it (a worker, or the supervisor of several), so /readyz can ask the consumer
or the workers as it answers. Nothing here knows about Prometheus: /metrics returns what
the caller's function renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from abe.backends.message_queue.base.deadlines import bounded
from abe.cli.errors import CommandError

__all__ = ["Endpoint", "Response", "Route", "serve"]

log = logging.getLogger("abe.run")

_REQUEST_TIMEOUT = 5.0
_HEAD_LIMIT = 16 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    """A status, a body and its content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A plain-text response, with a final newline."""
        return cls(status, f"{text}\n".encode())


Route = Callable[[], Awaitable[Response]]


@dataclass
class Endpoint:
    """A running endpoint: where it listens, and how to stop it."""

    server: asyncio.Server
    host: str
    port: int

    @property
    def url(self) -> str:
        """`http://host:port`, with IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening; requests being answered are cut short."""
        self.server.close()
        with contextlib.suppress(Exception):
            await bounded(self.server.wait_closed(), 2.0)


async def serve(host: str, port: int, routes: Mapping[str, Route]) -> Endpoint:
    """Listen on host:port (port 0: a free one) and answer `routes` by path.

    A port already in use, or a host that is not an address of this machine, is a
    CommandError (exit 1) naming the option to change.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, routes)

    try:
        server = await asyncio.start_server(answer, host, port, limit=_HEAD_LIMIT)
    except OSError as exc:
        raise CommandError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another "
            f"--metrics-port, or a --metrics-host this machine has"
        ) from exc
    bound = server.sockets[0].getsockname()
    return Endpoint(server, str(bound[0]), int(bound[1]))


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, routes: Mapping[str, Route]
) -> None:
    head_only = False
    try:
        try:
            head = await bounded(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            return  # the client left, or sent no request: nothing to answer
        except ValueError:
            response = Response.text(400, "bad request")
        else:
            head_only = method == "HEAD"
            response = await _route(method, target.split("?", 1)[0], routes)
        writer.write(_render(response, head_only=head_only))
        await bounded(writer.drain(), _REQUEST_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        pass  # the client went away mid-answer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await bounded(writer.wait_closed(), _REQUEST_TIMEOUT)


async def _route(method: str, path: str, routes: Mapping[str, Route]) -> Response:
    if method not in ("GET", "HEAD"):
        return Response.text(405, f"{method} is not supported here; use GET")
    route = routes.get(path)
    if route is None:
        return Response.text(404, f"no {path} here; try {', '.join(sorted(routes))}")
    try:
        return await route()
    except Exception as exc:
        log.warning("answering %s failed (%s: %s)", path, type(exc).__name__, exc)
        return Response.text(500, f"{path} failed: {type(exc).__name__}")


def _render(response: Response, *, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body
