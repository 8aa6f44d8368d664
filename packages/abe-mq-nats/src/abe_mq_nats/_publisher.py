"""JetStream publishing: one message, or a batch without waiting for each acknowledgement.

Each publish gets its own reply subject on one inbox of the connection; a batch is sent
at once and the acknowledgements collected afterwards (`publish_many`). nats-py's
`publish_async()` works the same way but leaves the future of a publish that JetStream
refuses pending forever (nats-py issue #985: `APIError.from_error` raises inside the
reply handler), so a refused message could only be told from a slow one by a timeout.
This publisher resolves every future: with the acknowledgement, with JetStream's error,
or with a timeout. Single publishes use the same path, which costs less per message than
`js.publish()` (no random token per request, no `wait_for`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from abe.errors import BackendUnavailableError

__all__ = ["WINDOW", "BatchPublisher"]

WINDOW = 1000
"""Most publishes awaiting their acknowledgement at once."""


class BatchPublisher:
    """Publishes batches to JetStream on one client and reports each message's outcome."""

    def __init__(self) -> None:
        self._client: NatsClient | None = None
        self._inbox = ""
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._counter = 0

    async def _attach(self, client: NatsClient) -> None:
        if client is self._client:
            return
        self._abandon(BackendUnavailableError("nats: the connection was replaced"))
        self._inbox = client.new_inbox()
        self._prefix = f"{self._inbox}."
        await client.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        self._client = client

    def _abandon(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def publish_one(
        self, client: NatsClient, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> None:
        """Publish one message and wait for JetStream to store it (or raise why not)."""
        if client is not self._client:
            await self._attach(client)
        self._counter += 1
        token = str(self._counter)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending[token] = future
        try:
            await client.publish(subject, body, reply=self._prefix + token, headers=headers)
            timer = loop.call_later(timeout, _time_out, future)
            try:
                await future
            finally:
                timer.cancel()
        finally:
            self._pending.pop(token, None)

    async def publish(
        self,
        client: NatsClient,
        subject: str,
        messages: Sequence[tuple[bytes, dict[str, str]]],
        deadline: float,
    ) -> dict[int, Exception]:
        """Publish `(body, headers)` pairs in order; the failures by index (empty: all stored)."""
        await self._attach(client)
        loop = asyncio.get_running_loop()
        failed: dict[int, Exception] = {}
        for start in range(0, len(messages), WINDOW):
            window = messages[start : start + WINDOW]
            futures: list[asyncio.Future[None]] = []
            tokens: list[str] = []
            try:
                for body, headers in window:
                    self._counter += 1
                    token = str(self._counter)
                    future: asyncio.Future[None] = loop.create_future()
                    self._pending[token] = future
                    tokens.append(token)
                    futures.append(future)
                    await client.publish(
                        subject, body, reply=f"{self._inbox}.{token}", headers=headers
                    )
            except Exception as exc:  # not sent: this one and the rest of the batch
                futures.pop()
                for index in range(start + len(futures), len(messages)):
                    failed[index] = exc
            try:
                if futures:
                    await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0))
            finally:
                for token in tokens:
                    self._pending.pop(token, None)
            for offset, future in enumerate(futures):
                if not future.done():
                    future.cancel()
                    failed[start + offset] = BackendUnavailableError(
                        "nats: JetStream did not acknowledge the message in time"
                    )
                elif future.exception() is not None:
                    error = future.exception()
                    assert isinstance(error, Exception)
                    failed[start + offset] = error
            if failed and start + WINDOW < len(messages):
                # Something is wrong (refusals, or no acknowledgement): do not send the rest.
                for index in range(start + len(window), len(messages)):
                    failed.setdefault(
                        index, BackendUnavailableError("nats: not sent after earlier failures")
                    )
                break
        return failed

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
        except ValueError:
            future.set_exception(
                BackendUnavailableError("nats: JetStream answered a publish with something odd")
            )
            return
        error = response.get("error") if isinstance(response, dict) else None
        if error:
            future.set_exception(_api_error(error))
            return
        future.set_result(None)


def _time_out(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _api_error(error: dict[str, object]) -> Exception:
    try:
        nats.js.errors.APIError.from_error(error)  # raises the matching APIError subclass
    except nats.js.errors.APIError as raised:
        return raised
    return nats.js.errors.APIError(description=str(error))  # pragma: no cover
