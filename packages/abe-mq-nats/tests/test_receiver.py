"""The pull logic against a fake client: request shapes, credit, statuses, settlement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import nats.errors
import pytest
from nats.aio.msg import Msg

from abe.provider import Deadline
from abe_mq_nats import NatsBackend, NatsSettings
from abe_mq_nats._client import JetStream, NatsReceiver, StreamRef

pytestmark = pytest.mark.asyncio

INBOX = "_INBOX.test"


class FakeClient:
    """Just enough of nats-py's client for the receiver: publish, subscribe, state."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []
        self.callback: Callable[[Msg], Awaitable[None]] | None = None
        self.is_connected = True
        self.is_closed = False
        self.sent = asyncio.Event()

    def new_inbox(self) -> str:
        return INBOX

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        assert subject == f"{INBOX}.*.*"
        self.callback = cb
        return self

    async def unsubscribe(self) -> None:
        self.callback = None

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "") -> None:
        self.published.append((subject, payload, reply))
        self.sent.set()

    def requests(self) -> list[tuple[str, dict[str, Any], str]]:
        return [
            (subject, json.loads(payload), reply)
            for subject, payload, reply in self.published
            if subject.startswith("$JS.API.CONSUMER.MSG.NEXT.")
        ]

    async def deliver(
        self, stream: str, consumer: str, *, delivered: int = 1, seq: int = 1, pending: int = 0
    ) -> None:
        """A message of `consumer`: on its own subject (as JetStream delivers it), not the inbox."""
        assert self.callback is not None
        reply = f"$JS.ACK.{stream}.{consumer}.{delivered}.{seq}.{seq}.1700000000000000000.{pending}"
        await self.callback(
            Msg(None, subject="orders", reply=reply, data=b'{"n":%d}' % seq, headers={"h": "v"})  # type: ignore[arg-type]
        )

    async def status(self, reply: str, code: str, description: str = "") -> None:
        assert self.callback is not None
        headers = {"Status": code, "Description": description}
        await self.callback(Msg(None, subject=reply, reply="", data=b"", headers=headers))  # type: ignore[arg-type]


async def make(*keys: str, redelivery: float = 2.0) -> tuple[NatsReceiver, FakeClient, JetStream]:
    """A receiver on `keys`, each served by stream `S-<key>` and consumer `g`, set up."""
    jetstream = NatsBackend(NatsSettings(redelivery_timeout=redelivery))._jetstream
    client = FakeClient()
    jetstream.client = client  # type: ignore[assignment]
    jetstream.epoch = 1

    async def stream_for(key: str, deadline: Deadline, *, refresh: bool = False) -> StreamRef:
        return StreamRef(f"S-{key}", dedicated=True)

    async def consumer_for(stream: StreamRef, key: str, group: str, deadline: Deadline) -> str:
        return "g"

    jetstream.stream_for = stream_for  # type: ignore[method-assign]
    jetstream.consumer_for = consumer_for  # type: ignore[method-assign]
    receiver = NatsReceiver(jetstream, "g", keys)
    await receiver.setup(Deadline(1.0))
    return receiver, client, jetstream


async def next_request(client: FakeClient, count: int) -> list[tuple[str, dict[str, Any], str]]:
    while len(client.requests()) < count:
        client.sent.clear()
        await asyncio.wait_for(client.sent.wait(), 2)
    return client.requests()


async def test_a_batch_comes_from_one_no_wait_request() -> None:
    receiver, client, _ = await make("orders")
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    [(subject, request, reply)] = await next_request(client, 1)
    assert subject == "$JS.API.CONSUMER.MSG.NEXT.S-orders.g"
    assert request == {"batch": 10, "no_wait": True}
    await client.deliver("S-orders", "g", seq=5, pending=1)
    await client.deliver("S-orders", "g", seq=6, delivered=3)
    await asyncio.sleep(0)
    assert not fetching.done(), "returns once the no_wait request has ended"
    await client.status(reply, "408", "Request Timeout")
    messages = await asyncio.wait_for(fetching, 1)
    assert [(m.key, m.attempt, m.broker_id, m.body) for m in messages] == [
        ("orders", 1, "S-orders:5", b'{"n":5}'),
        ("orders", 3, "S-orders:6", b'{"n":6}'),
    ]
    assert messages[0].headers == {"h": "v"}
    assert messages[0].handle.startswith("$JS.ACK.S-orders.g.1.5.")


async def test_when_drained_one_message_is_awaited_at_a_time() -> None:
    receiver, client, _ = await make("orders", redelivery=4.0)
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    [(_, _, reply)] = await next_request(client, 1)
    await client.status(reply, "404", "No Messages")
    requests = await next_request(client, 2)
    request = requests[1][1]
    assert request["batch"] == 1
    assert "no_wait" not in request
    assert 1.0e9 <= request["expires"] <= 2.0e9  # between 1/4 and 1/2 of the redelivery timeout
    await client.deliver("S-orders", "g", seq=1, pending=7)
    assert len(await asyncio.wait_for(fetching, 1)) == 1
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    requests = await next_request(client, 3)
    assert requests[2][1] == {"batch": 10, "no_wait": True}, "pending > 0: take them in a batch"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)


async def test_credit_is_split_and_never_exceeded() -> None:
    receiver, client, _ = await make("a", "b", "c")
    fetching = asyncio.ensure_future(receiver.fetch(25, 5.0))
    requests = await next_request(client, 2)
    await asyncio.sleep(0.05)
    assert len(client.requests()) == 2, "a backlog is pulled in batches of 10 or more"
    assert sorted(request["batch"] for _, request, _ in requests) == [12, 13]
    await client.deliver("S-a", "g", seq=1)
    await client.status(requests[0][2], "404")
    await client.status(requests[1][2], "404")
    assert len(await asyncio.wait_for(fetching, 1)) == 1
    fetching = asyncio.ensure_future(receiver.fetch(5, 5.0))
    requests = await next_request(client, 5)
    batches = sorted(request["batch"] for _, request, _ in requests[2:])
    assert batches == [1, 1, 3], "no backlog known: one waiting request a key; a backlog: the rest"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)

    receiver, client, _ = await make("a", "b", "c")
    fetching = asyncio.ensure_future(receiver.fetch(5, 5.0))
    [(_, request, _)] = await next_request(client, 1)
    assert request == {"batch": 5, "no_wait": True}, "credit under 10: one key takes it all"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)

    receiver, client, _ = await make("a", "b", "c")
    fetching = asyncio.ensure_future(receiver.fetch(1, 5.0))
    await next_request(client, 1)
    await asyncio.sleep(0.05)
    assert len(client.requests()) == 1, "credit 1: one request for one message"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)


async def test_an_open_request_is_not_asked_twice() -> None:
    receiver, client, _ = await make("orders")
    fetching = asyncio.ensure_future(receiver.fetch(10, 0.2))
    [(_, _, reply)] = await next_request(client, 1)
    assert await fetching == []
    fetching = asyncio.ensure_future(receiver.fetch(10, 0.2))
    await asyncio.sleep(0.05)
    assert len(client.requests()) == 1, "the unanswered request still counts"
    await client.deliver("S-orders", "g", seq=1)
    await client.status(reply, "408")
    assert len(await fetching) == 1


async def test_unanswered_requests_lead_to_setup() -> None:
    receiver, client, jetstream = await make("orders")
    receiver._answer_grace = 0.05
    calls: list[str] = []

    async def stream_for(key: str, deadline: Deadline, *, refresh: bool = False) -> StreamRef:
        calls.append(f"stream {key} {refresh}")
        return StreamRef("S2-orders", dedicated=True)

    async def consumer_for(stream: StreamRef, key: str, group: str, deadline: Deadline) -> str:
        calls.append(f"consumer {stream.name} {group}")
        return "g2"

    jetstream.stream_for = stream_for  # type: ignore[method-assign]
    jetstream.consumer_for = consumer_for  # type: ignore[method-assign]
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    await next_request(client, 2)
    assert calls == ["stream orders True", "consumer S2-orders g"]
    assert client.requests()[1][0] == "$JS.API.CONSUMER.MSG.NEXT.S2-orders.g2"
    await client.deliver("S2-orders", "g2", seq=9)
    await client.status(client.requests()[1][2], "408")
    [message] = await asyncio.wait_for(fetching, 1)
    assert message.broker_id == "S2-orders:9"


async def test_a_new_connection_epoch_forgets_open_requests() -> None:
    receiver, client, jetstream = await make("orders")
    calls: list[str] = []

    async def stream_for(key: str, deadline: Deadline, *, refresh: bool = False) -> StreamRef:
        calls.append(f"{key} {refresh}")
        return StreamRef("S-orders", dedicated=True)

    async def consumer_for(stream: StreamRef, key: str, group: str, deadline: Deadline) -> str:
        return "g"

    jetstream.stream_for = stream_for  # type: ignore[method-assign]
    jetstream.consumer_for = consumer_for  # type: ignore[method-assign]
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    await next_request(client, 1)
    jetstream._bump()  # disconnected
    jetstream._bump()  # reconnected
    await next_request(client, 2)
    assert calls == ["orders True"], "stream and consumer are checked after a reconnection"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)


async def test_settling_publishes_the_jetstream_acks() -> None:
    receiver, client, _ = await make("orders")
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    [(_, _, reply)] = await next_request(client, 1)
    for seq in (1, 2, 3):
        await client.deliver("S-orders", "g", seq=seq)
    await client.status(reply, "408")
    first, second, third = await fetching
    client.published.clear()
    await receiver.ack([first])
    await receiver.nack(second, 1.5)
    await receiver.nack(third, 0)
    await receiver.extend([first])
    assert [(payload, subject.split(".")[5]) for subject, payload, _ in client.published] == [
        (b"+ACK", "1"),
        (b'-NAK {"delay":1500000000}', "2"),
        (b"-NAK", "3"),
        (b"+WPI", "1"),
    ]


async def test_close_gives_back_what_was_never_returned() -> None:
    receiver, client, _ = await make("orders")
    fetching = asyncio.ensure_future(receiver.fetch(1, 5.0))
    [(_, _, reply)] = await next_request(client, 1)
    await client.deliver("S-orders", "g", seq=1)
    await client.deliver("S-orders", "g", seq=2)  # more than asked: kept for the next fetch
    await client.status(reply, "408")
    assert len(await fetching) == 1
    client.published.clear()
    await receiver.close()
    assert [(subject.split(".")[5], payload) for subject, payload, _ in client.published] == [
        ("2", b"-NAK")
    ]
    assert client.callback is None, "the inbox is unsubscribed"
    assert await receiver.fetch(10, 0.1) == []
    await receiver.close()


async def test_status_409_for_a_deleted_consumer_leads_to_setup() -> None:
    receiver, client, jetstream = await make("orders")
    calls: list[str] = []

    async def stream_for(key: str, deadline: Deadline, *, refresh: bool = False) -> StreamRef:
        calls.append(f"{key} {refresh}")
        return StreamRef("S-orders", dedicated=True)

    jetstream.stream_for = stream_for  # type: ignore[method-assign]
    fetching = asyncio.ensure_future(receiver.fetch(10, 5.0))
    [(_, _, reply)] = await next_request(client, 1)
    await client.status(reply, "408", "Request Timeout")
    await next_request(client, 2)
    assert calls == [], "an expired request needs no setup"
    await client.status(client.requests()[1][2], "409", "Consumer Deleted")
    await next_request(client, 3)
    assert calls == ["orders True"], "the stream and consumer were looked up again"
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)


class SilentAtFirst:
    """A JetStream context whose server leaves the first `silent` API requests unanswered."""

    asked: ClassVar[list[float]] = []
    silent = 1

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def stream_info(self, name: str) -> str:
        self.asked.append(self.timeout)
        if len(self.asked) <= self.silent:
            await asyncio.sleep(0.01)  # how long nats-py waited for the answer, shortened
            raise nats.errors.TimeoutError
        return f"info of {name}"


async def test_an_api_request_left_unanswered_is_asked_again_within_the_deadline() -> None:
    """A 2.9 cluster may leave one unanswered while it elects a stream's leader: a lookup is
    asked again, each time waiting a third of what is left, instead of failing the call."""
    jetstream = NatsBackend(NatsSettings())._jetstream
    client = FakeClient()
    client.jetstream = SilentAtFirst  # type: ignore[attr-defined]
    jetstream.client = client  # type: ignore[assignment]
    SilentAtFirst.asked, SilentAtFirst.silent = [], 2
    request = SilentAtFirst.stream_info
    assert await jetstream.ask(Deadline(6.0), request, "S") == "info of S"
    first, second, third = SilentAtFirst.asked
    assert 1.9 < first <= 2.0
    assert third < second < first
    SilentAtFirst.asked, SilentAtFirst.silent = [], 1000
    with pytest.raises(nats.errors.TimeoutError):
        await jetstream.ask(Deadline(0.1), request, "S")
    assert 2 < len(SilentAtFirst.asked) < 20, "asked again until the deadline, then raised"
