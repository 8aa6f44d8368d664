"""The backend's SQS calls, against an in-memory stand-in for the aiobotocore client.

What a real endpoint cannot be made to do on demand (refuse some entries of a batch,
fail one call of several) is checked here; tests-integration/ runs the rest for real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from abe.backends.message_queue.base.codec import IncomingMessage
from abe.errors import BackendUnavailableError, PayloadError, PublishError
from abe.settings import Secret
from abe_mq_sqs import SqsBackend, SqsSettings, _client
from abe_mq_sqs._client import SqsReceiver

pytestmark = pytest.mark.asyncio


class FakeSqs:
    """Records every call; queues are lists; `refuse` and `fail` inject errors."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.queues: dict[str, list[dict[str, Any]]] = {}
        self.refuse: set[str] = set()  # message bodies SendMessageBatch reports as failed
        self.fail_batches: set[int] = set()  # SendMessageBatch calls (1-based) that raise
        self.receive_delay: dict[str, float] = {}
        self._batch_calls = 0

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def get_queue_url(self, **kwargs: Any) -> dict[str, Any]:
        self._record("get_queue_url", kwargs)
        name = kwargs["QueueName"]
        if name not in self.queues:
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "no"}},
                "GetQueueUrl",
            )
        return {"QueueUrl": f"fake://{name}"}

    async def create_queue(self, **kwargs: Any) -> dict[str, Any]:
        self._record("create_queue", kwargs)
        self.queues.setdefault(kwargs["QueueName"], [])
        return {"QueueUrl": f"fake://{kwargs['QueueName']}"}

    async def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self._record("send_message", kwargs)
        self.queues[kwargs["QueueUrl"].removeprefix("fake://")].append(kwargs)
        return {"MessageId": "m"}

    async def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._record("send_message_batch", kwargs)
        self._batch_calls += 1
        if self._batch_calls in self.fail_batches:
            raise EndpointConnectionError(endpoint_url="fake://")
        failed = [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "no"}
            for e in kwargs["Entries"]
            if e["MessageBody"] in self.refuse
        ]
        queue = self.queues[kwargs["QueueUrl"].removeprefix("fake://")]
        queue.extend(e for e in kwargs["Entries"] if e["MessageBody"] not in self.refuse)
        return {"Successful": [], "Failed": failed}

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self._record("receive_message", kwargs)
        name = kwargs["QueueUrl"].removeprefix("fake://")
        await asyncio.sleep(self.receive_delay.get(name, 0.0))
        queue = self.queues[name]
        taken, queue[:] = (
            queue[: kwargs["MaxNumberOfMessages"]],
            queue[kwargs["MaxNumberOfMessages"] :],
        )
        return {
            "Messages": [
                {
                    "MessageId": f"id-{index}",
                    "ReceiptHandle": f"rh-{name}-{index}",
                    "Body": entry["MessageBody"],
                    "Attributes": {"ApproximateReceiveCount": "2"},
                    "MessageAttributes": entry.get("MessageAttributes", {}),
                }
                for index, entry in enumerate(taken)
            ]
        }

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._record("delete_message_batch", kwargs)
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._record("change_message_visibility_batch", kwargs)
        return {"Successful": [], "Failed": []}

    async def change_message_visibility(self, **kwargs: Any) -> dict[str, Any]:
        self._record("change_message_visibility", kwargs)
        return {}

    async def __aexit__(self, *exc_info: object) -> None:
        self._record("close", {})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSqs:
    """The stand-in every backend of the test connects to instead of aiobotocore."""
    stand_in = FakeSqs()

    async def connect(settings: SqsSettings, agent: str) -> FakeSqs:
        return stand_in

    monkeypatch.setattr(_client, "connect", connect)
    return stand_in


def make(fake: FakeSqs, **overrides: Any) -> SqsBackend:
    values: dict[str, Any] = {
        "region": "us-east-1",
        "access_key_id": Secret("AKIAFAKE"),
        "secret_access_key": Secret("fake"),
        "redelivery_timeout": 2.0,
    }
    values.update(overrides)
    return SqsBackend(SqsSettings(**values))


async def test_queue_is_resolved_once_and_created_with_its_attributes(fake: FakeSqs) -> None:
    backend = make(fake, queue_prefix="p-", max_payload_bytes=261_120)
    await backend.publish("orders", {"n": 1})
    await backend.publish("orders", {"n": 2})
    assert fake.names() == ["get_queue_url", "create_queue", "send_message", "send_message"]
    assert fake.calls[1][1] == {
        "QueueName": "p-orders",
        "Attributes": {"MaximumMessageSize": "262144"},
    }
    await backend.publish("jobs.fifo", {"n": 1})
    assert fake.calls[-2][1]["Attributes"] == {
        "MaximumMessageSize": "262144",
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
    }
    sent = fake.calls[-1][1]
    assert sent["MessageGroupId"] == "jobs.fifo"
    assert sent["MessageDeduplicationId"]  # abe's message id
    # abe's id travels (FIFO deduplicates on it); SQS's SentTimestamp is the publish time
    assert sent["MessageAttributes"] == {
        "abe-id": {"DataType": "String", "StringValue": sent["MessageDeduplicationId"]}
    }
    await backend.close()


async def test_publish_writes_the_json_body_and_string_attributes(fake: FakeSqs) -> None:
    backend = make(fake)
    await backend.publish("k", {"a": [1, "é"]}, headers={"trace-id": "t"}, message_id="m-1")
    sent = fake.calls[-1][1]
    assert sent["MessageBody"] == '{"a":[1,"é"]}'
    assert sent["MessageAttributes"] == {
        "abe-id": {"DataType": "String", "StringValue": "m-1"},
        "trace-id": {"DataType": "String", "StringValue": "t"},
    }
    assert "DelaySeconds" not in sent
    assert "MessageGroupId" not in sent


async def test_publish_many_uses_batches_of_ten(fake: FakeSqs) -> None:
    backend = make(fake)
    await backend.publish_many("k", [{"n": n} for n in range(25)])
    batches = [kwargs["Entries"] for name, kwargs in fake.calls if name == "send_message_batch"]
    assert [len(entries) for entries in batches] == [10, 10, 5]
    ids = [entry["Id"] for entries in batches for entry in entries]
    assert ids == [str(n) for n in range(25)]
    bodies = [json.loads(entry["MessageBody"])["n"] for entries in batches for entry in entries]
    assert sorted(bodies) == list(range(25))


async def test_batches_are_split_by_size(fake: FakeSqs) -> None:
    backend = make(fake)
    blob = "x" * 400_000
    await backend.publish_many("k", [{"blob": blob} for _ in range(5)])
    batches = [kwargs["Entries"] for name, kwargs in fake.calls if name == "send_message_batch"]
    assert [len(entries) for entries in batches] == [2, 2, 1]


async def test_refused_entries_become_a_publish_error(fake: FakeSqs) -> None:
    backend = make(fake)
    fake.refuse = {'{"n":3}', '{"n":17}'}
    with pytest.raises(PublishError) as refused:
        await backend.publish_many("k", [{"n": n} for n in range(20)])
    assert refused.value.failed.keys() == {3, 17}
    assert refused.value.total == 20
    assert "InvalidMessageContents" in refused.value.failed[3]
    assert len(fake.queues["k"]) == 18


async def test_a_failed_call_among_several_is_reported_by_index(fake: FakeSqs) -> None:
    backend = make(fake, max_attempts=1)
    fake.fail_batches = {2}
    with pytest.raises(PublishError) as refused:
        await backend.publish_many("k", [{"n": n} for n in range(30)])
    assert len(refused.value.failed) == 10
    assert "Could not connect" in next(iter(refused.value.failed.values()))
    assert len(fake.queues["k"]) == 20


async def test_nothing_sent_raises_the_plain_error(fake: FakeSqs) -> None:
    backend = make(fake)
    fake.fail_batches = {1, 2}
    with pytest.raises(BackendUnavailableError):
        await backend.publish_many("k", [{"n": n} for n in range(20)])


async def test_fifo_batches_stop_at_the_first_failure(fake: FakeSqs) -> None:
    backend = make(fake)
    fake.refuse = {'{"n":12}'}
    with pytest.raises(PublishError) as refused:
        await backend.publish_many("k.fifo", [{"n": n} for n in range(35)])
    assert refused.value.failed.keys() == {12, *range(20, 35)}
    assert "earlier message" in refused.value.failed[25]
    assert sum(name == "send_message_batch" for name in fake.names()) == 2


async def test_headers_that_overflow_the_message_limit(fake: FakeSqs) -> None:
    backend = make(fake, max_payload_bytes=2_000)
    with pytest.raises(PayloadError, match="headers"):
        await backend.publish("k", {"x": "y" * 1_900}, headers={"big": "z" * 1_200, "o": "p"})
    with pytest.raises(PayloadError, match=r"payloads\[1\]"):
        await backend.publish_many("k", [{"x": 1}, {"x": "y" * 1_900}], headers={"h": "v" * 1_200})
    assert "send_message" not in fake.names()
    assert "send_message_batch" not in fake.names()


async def test_a_dead_letter_note_is_shortened_to_fit(fake: FakeSqs) -> None:
    backend = make(fake, max_payload_bytes=2_000)
    message = IncomingMessage("k", b'{"x":"' + b"y" * 1_980 + b'"}', {"abe-id": "i"}, 3, "b", "h")
    await backend._dead_letter(message, "E" * 1_000)
    sent = fake.calls[-1][1]
    assert sent["QueueUrl"] == "fake://k-dlq"
    note = sent["MessageAttributes"]["abe-error"]["StringValue"]
    assert 0 < len(note) < 1_000
    assert sent["MessageAttributes"]["abe-original-key"]["StringValue"] == "k"


async def test_receive_acks_and_visibility(fake: FakeSqs) -> None:
    backend = make(fake, wait_time_seconds=3)
    await backend.publish_many("k", [{"n": n} for n in range(25)])
    receiver = await backend._open_receiver("g", ["k"])
    messages = await receiver.fetch(100, 20.0)
    call = fake.calls[-1][1]
    assert call["MaxNumberOfMessages"] == 10
    assert call["WaitTimeSeconds"] == 3
    assert call["VisibilityTimeout"] == 2
    assert call["MessageAttributeNames"] == ["All"]
    assert len(messages) == 10
    assert messages[0].attempt == 2
    assert set(messages[0].headers) == {"abe-id"}  # the fake sends no SentTimestamp
    assert messages[0].headers["abe-id"] != messages[0].broker_id  # abe's id, not SQS's
    more = list(messages) + list(await receiver.fetch(100, 20.0))
    await receiver.ack(more)
    deletes = [kwargs for name, kwargs in fake.calls if name == "delete_message_batch"]
    assert [len(kwargs["Entries"]) for kwargs in deletes] == [10, 10]
    await receiver.extend(more[:3])
    extended = fake.calls[-1][1]
    assert fake.calls[-1][0] == "change_message_visibility_batch"
    assert [entry["VisibilityTimeout"] for entry in extended["Entries"]] == [2, 2, 2]
    await receiver.release(more[3:5])
    assert fake.calls[-1][0] == "change_message_visibility_batch"
    assert [entry["VisibilityTimeout"] for entry in fake.calls[-1][1]["Entries"]] == [0, 0]
    await receiver.nack(more[0], 1.2)
    assert fake.calls[-1] == (
        "change_message_visibility",
        {"QueueUrl": "fake://k", "ReceiptHandle": more[0].handle, "VisibilityTimeout": 2},
    )
    await receiver.close()


async def test_several_keys_share_the_credit_and_do_not_wait_for_each_other(
    fake: FakeSqs,
) -> None:
    backend = make(fake, wait_time_seconds=20)
    for key in ("a", "b", "c"):
        fake.queues[key] = []
    fake.receive_delay = {"a": 30.0, "b": 30.0}  # idle queues: their long polls hang on
    await backend.publish_many("c", [{"n": n} for n in range(3)])
    receiver = await backend._open_receiver("g", ["a", "b", "c"])
    assert isinstance(receiver, SqsReceiver)
    messages = await asyncio.wait_for(receiver.fetch(7, 20.0), 5.0)
    asked = {
        kwargs["QueueUrl"]: kwargs["MaxNumberOfMessages"]
        for name, kwargs in fake.calls
        if name == "receive_message"
    }
    assert sum(asked.values()) <= 7  # the polls in flight share the credit
    assert len(messages) == min(3, asked["fake://c"])
    assert {message.key for message in messages} == {"c"}
    await backend.publish("c", {"n": 3})
    await receiver.ack(messages)  # settled: the consumer's credit is whole again
    more = await asyncio.wait_for(receiver.fetch(7, 20.0), 5.0)
    assert more
    assert {message.key for message in more} == {"c"}
    assert len(more) + sum(receiver._asked.values()) <= 7
    # No credit left for c (the idle polls hold it all): back within a second, empty.
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(receiver.fetch(sum(receiver._asked.values()), 20.0), 5.0) == []
    assert loop.time() - started < 2.0
    await receiver.close()
    assert not receiver._polls


async def test_short_polling_paces_itself(fake: FakeSqs) -> None:
    backend = make(fake, wait_time_seconds=0, poll_interval=1.0)
    fake.queues["k"] = []
    receiver = await backend._open_receiver("g", ["k"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await receiver.fetch(10, 0.3) == []
    assert loop.time() - started >= 0.25
    assert fake.calls[-1][1]["WaitTimeSeconds"] == 0


async def test_close_closes_the_client(fake: FakeSqs) -> None:
    backend = make(fake)
    await backend.publish("k", {"n": 1})
    await backend.close()
    assert fake.names()[-1] == "close"
    await backend.close()
    assert fake.names().count("close") == 1


def _handles(messages: Sequence[IncomingMessage]) -> list[str]:
    return [str(message.handle) for message in messages]


async def test_the_prefix_takes_room_from_keys(fake: FakeSqs) -> None:
    from abe.errors import InvalidKeyError

    backend = make(fake, queue_prefix="team-a-")
    with pytest.raises(InvalidKeyError, match="ABE_SQS_QUEUE_PREFIX"):
        await backend.publish("k" * 70, {"x": 1})
    with pytest.raises(InvalidKeyError, match="ABE_SQS_QUEUE_PREFIX"):
        backend.subscribe(keys=["k" * 70])
    assert fake.calls == []
    await backend.publish("k" * 69, {"x": 1})
    assert fake.calls[-1][1]["QueueUrl"] == "fake://team-a-" + "k" * 69


async def test_a_failed_tls_handshake_is_not_retried() -> None:
    """https:// to a plain-HTTP server fails the same way every time: one attempt, not
    `max_attempts` with back-off in between, and the error says why."""
    connections = 0

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1)  # the TLS ClientHello's first byte
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = SqsSettings(
        region="us-east-1",
        endpoint_url=f"https://127.0.0.1:{port}",
        access_key_id=Secret("AKIAFAKE"),
        secret_access_key=Secret("fake"),
        max_attempts=3,
    )
    try:
        async with SqsBackend(settings) as backend:
            with pytest.raises(BackendUnavailableError) as failed:
                await backend.publish("k", {"n": 1})
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 1
    assert "TLS handshake with the endpoint failed" in str(failed.value)
