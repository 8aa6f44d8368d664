"""Why confirmed Kafka messages went missing in the crash test: Tansu on stock moto.

Tansu gives a partition's records their offsets by compare-and-swap on an S3 object
(``watermark.json``) and stores each batch with a create-only PUT. Stock moto checks a
PUT's ``If-None-Match``/``If-Match`` and then stores in two steps, a thread per request:
two first produces to a partition at once both pass, get offset 0, and the broker
confirms both while a consumer reads only one. The window is a few microseconds; here
moto's store step is slowed (in this process) to make it show on every try. The test
brokers run moto with the two steps made one (abe_brokers/atomic_moto.py), and then
every confirmed record is read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from abe_brokers.atomic_moto import make_put_object_atomic
from abe_brokers.probes import botocore_client
from abe_brokers.procs import free_port
from abe_brokers.servers import KafkaServer, tansu_binary
from abe_brokers.tansu_fault import (
    TANSU_FAULT_SIGNS,
    confirmed_overlaps,
    forgotten_members,
    watch_confirmations,
    watch_members,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

pytestmark = pytest.mark.asyncio

_STORE_DELAY = 0.3  # seconds between moto's precondition check and its write, here


class _InProcessMoto:
    """moto's server in this process (so its store step can be slowed), as KafkaServer's S3."""

    region, access_key_id, secret_access_key = "us-east-1", "testing", "testing"

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def create_bucket(self, name: str) -> None:
        client = botocore_client("s3", self.endpoint_url, region=self.region)
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()


@pytest.fixture
def tansu_on_slow_moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Tansu storing in S3 on an in-process moto whose store step takes `_STORE_DELAY`."""
    store = S3Backend.put_object

    def slow_store(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(_STORE_DELAY)  # widens the race window; not a wait for an event
        return store(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_store)
    monkeypatch.setattr(S3Response, "put_object", S3Response.put_object)  # restored after
    moto = _InProcessMoto()
    moto.server.start()
    tansu = KafkaServer(tmp_path, s3=moto, binary=tansu_binary())  # type: ignore[arg-type]
    try:
        tansu.start()
        yield tansu.bootstrap
    finally:
        tansu.kill()
        moto.server.stop()


async def _first_produces_at_once(bootstrap: str) -> tuple[dict[bytes, Any], dict[bytes, int]]:
    """On a new one-partition topic, a batch of two records and one record sent at the same
    moment by two producers, then two more; what the broker confirmed (offset or error) and
    what a plain consumer reads back (offset of each value)."""
    topic = f"race-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    options = {"bootstrap_servers": bootstrap, "enable_idempotence": False, "acks": "all"}
    batching, single = AIOKafkaProducer(linger_ms=200, **options), AIOKafkaProducer(**options)
    confirmed: dict[bytes, Any] = {}
    await batching.start()
    await single.start()
    try:
        await batching.partitions_for(topic)
        await single.partitions_for(topic)
        sends = [await batching.send(topic, value, partition=0) for value in (b"a0", b"a1")]
        await asyncio.sleep(0.1)  # the batch leaves at its linger's end, 0.1 s after this one
        sends.append(await single.send(topic, b"b0", partition=0))
        results = await asyncio.gather(*sends, return_exceptions=True)
        for value, result in zip((b"a0", b"a1", b"b0"), results, strict=True):
            confirmed[value] = result if isinstance(result, Exception) else result.offset
        for value in (b"c0", b"c1"):
            confirmed[value] = (await single.send_and_wait(topic, value, partition=0)).offset
    finally:
        await batching.stop()
        await single.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    read: dict[bytes, int] = {}
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while await consumer.position(partition) < end:
            for record in (await consumer.getmany(partition, timeout_ms=1000)).get(partition, []):
                read[record.value] = record.offset
    finally:
        await consumer.stop()
    return confirmed, read


def _lost(confirmed: dict[bytes, Any], read: dict[bytes, int]) -> list[bytes]:
    return [
        value
        for value, offset in confirmed.items()
        if isinstance(offset, int) and value not in read
    ]


async def test_on_stock_moto_tansu_confirms_records_no_consumer_reads(
    tansu_on_slow_moto: str,
) -> None:
    watch_confirmations()
    confirmed, read = await _first_produces_at_once(tansu_on_slow_moto)
    assert _lost(confirmed, read), (confirmed, read)
    # what a marked test that failed after it is told (tansu_fault.pytest_runtest_call)
    assert any("for two different messages" in text for text in confirmed_overlaps())


async def test_on_atomic_moto_every_confirmed_record_is_read(tansu_on_slow_moto: str) -> None:
    make_put_object_atomic()
    watch_confirmations()
    for _ in range(2):
        confirmed, read = await _first_produces_at_once(tansu_on_slow_moto)
        assert not _lost(confirmed, read), (confirmed, read)
        offsets = [o for o in confirmed.values() if isinstance(o, int)]
        assert len(offsets) == len(set(offsets)), confirmed
    assert confirmed_overlaps() == []


async def test_the_coordinator_forgetting_a_member_is_a_sign_while_watched() -> None:
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    stop = watch_members()
    try:
        coordinator.debug("Received successful heartbeat response for group g")
        assert forgotten_members() == []
        # as aiokafka words the two answers (a heartbeat's, at DEBUG in some versions)
        coordinator.debug("Heartbeat failed: local member_id was not recognized; resetting")
        coordinator.debug(
            "OffsetCommit failed for group g due to group error (UnknownMemberIdError)"
        )
    finally:
        stop()
    coordinator.debug("Heartbeat failed: local member_id was not recognized; resetting")
    [sign] = forgotten_members()
    assert "answered 2 request(s)" in sign
    assert any(mark in sign for mark in TANSU_FAULT_SIGNS)
    assert coordinator.level == logging.NOTSET  # as it was
