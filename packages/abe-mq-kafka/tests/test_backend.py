"""The backend's own bookkeeping, offline: bounded sends, batches, topic creation once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from abe.errors import BackendUnavailableError
from abe_mq_kafka import KafkaBackend, KafkaSettings

pytestmark = pytest.mark.asyncio


class HangingProducer:
    """A producer whose broker never answers, as aiokafka's does with a broker that is away."""

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


class RecordingBatch:
    def __init__(self, room: int) -> None:
        self.room = room
        self.values: list[bytes] = []

    def append(self, *, timestamp: Any, key: Any, value: bytes, headers: Any) -> object | None:
        if self.values and len(self.values) >= self.room:
            return None
        self.values.append(value)
        return object()


class BatchingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[list[bytes], int]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(room=2)

    async def send_batch(self, batch: RecordingBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((batch.values, partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def stop(self) -> None:
        pass


def backend_with(producer: object, *, timeout: float = 10.0) -> KafkaBackend:
    backend = KafkaBackend(KafkaSettings(operation_timeout=timeout))
    backend.client.producer._client = producer  # as if connected
    backend.client.topics.remember("orders", None)
    return backend


async def test_a_send_that_never_ends_is_given_up_within_the_limit() -> None:
    backend = backend_with(HangingProducer(), timeout=0.4)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as failed:
        await backend.publish("orders", {"x": 1})
    assert 0.35 < time.monotonic() - started < 0.4 + 0.3
    assert "0.4" in str(failed.value)
    await backend.close()


async def test_outside_cancellation_stays_a_cancellation() -> None:
    backend = backend_with(HangingProducer(), timeout=5.0)
    publishing = asyncio.ensure_future(backend.publish("orders", {"x": 1}))
    await asyncio.sleep(0.05)
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    await backend.close()


async def test_publish_many_writes_record_batches_to_one_partition() -> None:
    producer = BatchingProducer()
    backend = backend_with(producer)
    await backend.publish_many("orders", [{"n": n} for n in range(5)])
    assert [len(values) for values, _ in producer.sent] == [2, 2, 1]
    assert len({partition for _, partition in producer.sent}) == 1
    assert [value for values, _ in producer.sent for value in values] == [
        b'{"n":%d}' % n for n in range(5)
    ]
    await backend.close()


async def test_publish_many_calls_take_the_partitions_in_turn() -> None:
    producer = BatchingProducer()
    backend = backend_with(producer)
    for _ in range(6):
        await backend.publish_many("orders", [{"n": 1}, {"n": 2}])  # one batch each
    chosen = [partition for _, partition in producer.sent]
    assert sorted(chosen) == [0, 0, 1, 1, 2, 2]  # evenly, whatever partition came first
    assert all(later == (earlier + 1) % 3 for earlier, later in itertools.pairwise(chosen))
    await backend.close()


class RecordingConsumer:
    """Stands in for AIOKafkaConsumer: remembers its options, starts and stops at once."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    async def start(self) -> None:
        pass

    def subscribe(self, topics: list[str], *, listener: Any) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_static_members_of_one_process_get_names_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("abe_mq_kafka._client.AIOKafkaConsumer", RecordingConsumer)
    backend = KafkaBackend(KafkaSettings(group_instance_id="worker-3"))
    client = backend.client
    first = await client.consumer("billing", ["orders"], None)
    second = await client.consumer("billing", ["orders"], None)
    other_group = await client.consumer("audit", ["orders"], None)
    names = [c.options["group_instance_id"] for c in (first, second, other_group)]
    assert names == ["worker-3", "worker-3-2", "worker-3"]
    await client.stop_consumer(first)
    again = await client.consumer("billing", ["orders"], None)  # a restarted subscription
    assert again.options["group_instance_id"] == "worker-3"
    dynamic = await KafkaBackend().client.consumer("billing", ["orders"], None)
    assert dynamic.options["group_instance_id"] is None
    await backend.close()


async def test_aiokafka_errors_during_an_outage_are_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """core's OutageLog sits on aiokafka's loggers: a reconnect loop is not a log flood."""
    backend = KafkaBackend(KafkaSettings(bootstrap_servers=("127.0.0.1:1",)))
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            logging.getLogger("aiokafka.conn").error('Unable connect to "127.0.0.1:1"')
    await backend.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["abe.outage"]
    assert "127.0.0.1:1" in loud[0].getMessage()


class CountingAdmin:
    """Answers CreateTopics after a moment; the first `failures` answers are refusals."""

    def __init__(self, failures: int) -> None:
        self.calls = 0
        self.failures = failures

    async def create_topics(self, topics: list[Any]) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        code = 7 if self.calls <= self.failures else 0  # 7: RequestTimedOut

        return SimpleNamespace(topic_errors=[(topics[0].name, code, "")])

    async def close(self) -> None:
        pass


async def test_a_topic_is_created_once_however_many_wait_and_again_after_a_failure() -> None:
    backend = KafkaBackend(KafkaSettings())
    admin = backend.client.admin._client = CountingAdmin(failures=1)  # as if connected
    results = await asyncio.gather(
        *(backend.client.ensure_topic("orders") for _ in range(5)), return_exceptions=True
    )
    assert admin.calls == 1
    assert all(type(result).__name__ == "RequestTimedOutError" for result in results)
    await asyncio.gather(*(backend.client.ensure_topic("orders") for _ in range(5)))
    await backend.client.ensure_topic("orders")  # known now: no call
    assert admin.calls == 2
    await backend.close()


class GroupAdmin:
    """Answers DeleteGroups with `code` and lists `topics`, recording the groups asked for."""

    def __init__(self, code: int, topics: list[str]) -> None:
        self.code, self.topics, self.deleted = code, topics, []

    async def find_coordinator(self, group: str) -> int:
        return 1

    async def _send_request(self, request: Any, node: int) -> Any:
        self.deleted.extend(request._group_names)
        return SimpleNamespace(results=[(name, self.code) for name in request._group_names])

    async def list_topics(self) -> list[str]:
        return self.topics

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("code", [0, 69])  # 69: GROUP_ID_NOT_FOUND, which is fine
async def test_delete_group_deletes_the_group_and_a_missing_one_is_fine(code: int) -> None:
    backend = KafkaBackend(KafkaSettings())
    admin = backend.client.admin._client = GroupAdmin(code, [])
    await backend.delete_group("abe-consume-1", ["orders"])
    assert admin.deleted == ["abe-consume-1"]
    await backend.close()


async def test_delete_group_refused_is_an_abe_error() -> None:
    backend = KafkaBackend(KafkaSettings())
    backend.client.admin._client = GroupAdmin(68, [])  # 68: NON_EMPTY_GROUP
    with pytest.raises(BackendUnavailableError, match="NonEmptyGroup"):
        await backend.delete_group("workers", ["orders"])
    await backend.close()


async def test_existing_keys_asks_the_broker_not_the_cache() -> None:
    backend = backend_with(BatchingProducer())  # "orders" is in the cache of created topics
    backend.client.admin._client = GroupAdmin(0, ["refunds", "other"])
    assert await backend.existing_keys(["orders", "refunds"]) == ["refunds"]
    await backend.close()
