"""The publisher: every acknowledgement collected, refusals and silence reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from abe.errors import BackendUnavailableError
from abe.provider import Deadline
from abe_mq_nats._backend import WINDOW, _Publisher

pytestmark = pytest.mark.asyncio


class FakeClient:
    """Answers each publish as `answer(index)` says: a PubAck, an error, 503, or nothing."""

    def __init__(self, answer: Callable[[int], Any], *, fail_at: int | None = None) -> None:
        self.answer = answer
        self.fail_at = fail_at
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.callback: Callable[[Msg], Awaitable[None]] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def new_inbox(self) -> str:
        return "_INBOX.pub"

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> None:
        self.callback = cb

    async def publish(
        self, subject: str, payload: bytes, reply: str, headers: dict[str, str]
    ) -> None:
        index = len(self.sent)
        if index == self.fail_at:
            raise nats.errors.ConnectionClosedError
        self.sent.append((subject, payload, headers))
        answer = self.answer(index)
        if answer is None:
            return
        task = asyncio.get_running_loop().create_task(self._reply(reply, answer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, reply: str, answer: Any) -> None:
        assert self.callback is not None
        if answer == 503:
            msg = Msg(None, subject=reply, data=b"", headers={"Status": "503"})  # type: ignore[arg-type]
        else:
            msg = Msg(None, subject=reply, data=json.dumps(answer).encode())  # type: ignore[arg-type]
        await self.callback(msg)


def ack(index: int) -> dict[str, Any]:
    return {"stream": "S", "seq": index + 1}


async def run(
    client: FakeClient, count: int, timeout: float = 1.0, publisher: _Publisher | None = None
) -> dict[int, Exception]:
    publisher = publisher or _Publisher()
    messages = [(b'{"n":%d}' % n, {"Nats-Msg-Id": str(n)}) for n in range(count)]
    return await publisher.publish(client, "orders", messages, Deadline(timeout))  # type: ignore[arg-type]


async def test_all_acknowledged() -> None:
    client = FakeClient(ack)
    assert await run(client, 250) == {}
    assert [payload for _, payload, _ in client.sent][:2] == [b'{"n":0}', b'{"n":1}']
    assert client.sent[3][2] == {"Nats-Msg-Id": "3"}


async def test_refusals_reach_the_caller() -> None:
    full = {"error": {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"}}
    client = FakeClient(lambda index: ack(index) if index < 3 else full)
    failed = await run(client, 5)
    assert sorted(failed) == [3, 4]
    assert isinstance(failed[3], nats.js.errors.ServiceUnavailableError)
    assert failed[3].err_code == 10077


async def test_no_stream_and_silence() -> None:
    client = FakeClient(lambda index: 503 if index == 0 else (None if index == 1 else ack(index)))
    failed = await run(client, 3, timeout=0.2)
    assert isinstance(failed[0], nats.js.errors.NoStreamResponseError)
    assert isinstance(failed[1], BackendUnavailableError)
    assert 2 not in failed


async def test_a_send_failure_fails_the_rest() -> None:
    client = FakeClient(ack, fail_at=2)
    failed = await run(client, 5)
    assert sorted(failed) == [2, 3, 4]
    assert all(isinstance(error, nats.errors.ConnectionClosedError) for error in failed.values())


async def test_later_windows_are_not_sent_after_a_failure() -> None:
    client = FakeClient(lambda index: None if index == 0 else ack(index))
    failed = await run(client, WINDOW + 10, timeout=0.2)
    assert len(client.sent) == WINDOW
    assert sorted(failed) == [0, *range(WINDOW, WINDOW + 10)]


async def test_one_message_at_a_time() -> None:
    publisher = _Publisher()
    answers: dict[int, Any] = {
        0: ack(0),
        1: {"error": {"code": 400, "err_code": 10054, "description": "message too big"}},
        2: 503,
        3: None,
    }
    client = FakeClient(answers.__getitem__)
    assert await run(client, 1, publisher=publisher) == {}
    [refused] = (await run(client, 1, publisher=publisher)).values()
    assert isinstance(refused, nats.js.errors.BadRequestError)
    assert "message too big" in str(refused)
    [gone] = (await run(client, 1, publisher=publisher)).values()
    assert isinstance(gone, nats.js.errors.NoStreamResponseError)
    started = asyncio.get_running_loop().time()
    [silent] = (await run(client, 1, timeout=0.2, publisher=publisher)).values()
    assert isinstance(silent, BackendUnavailableError)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert not publisher._pending, "nothing is left waiting"
    assert len(client.sent) == 4


async def test_cancelled_while_awaiting_acknowledgements_leaves_nothing_waiting() -> None:
    publisher = _Publisher()
    all_sent = asyncio.Event()
    client = FakeClient(lambda index: all_sent.set() if index == 2 else None)  # never answered
    task = asyncio.get_running_loop().create_task(run(client, 3, timeout=30.0, publisher=publisher))
    await all_sent.wait()  # the task now awaits acknowledgements
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not publisher._pending, "nothing is left waiting"
