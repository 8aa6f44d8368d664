"""The drain of `abe bench`, run with FastStream on the same brokers: abe beside its nearest peer.

For each broker whose address is in the environment (REDIS_URL, NATS_URL,
KAFKA_BOOTSTRAP_SERVERS), FastStream publishes a backlog of `--messages` payloads of
abe's benchmark shape to a fresh key, then one FastStream subscriber in a consumer
group drains it with an acknowledgement per message (`AckPolicy.ACK`: after the
handler), the way its documentation writes a worker, with its default settings. The
clock is abe's own (`abe.benchmarking.DrainClock`: from the first message handled to the
last), so the figure compares with abe's drains in the same run.

Run by `nox -s bench-peers` (not in the default run: it needs FastStream and takes
minutes); prints one JSON document (schema abe-bench-peers/1) on stdout.
"""

# Each drain imports its client and FastStream module only when measured: one may be absent.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from abe.benchmarking import DrainClock, Measurement, Workload

SCHEMA = "abe-bench-peers/1"
BATCH = 100


def _workload(messages: int, payload_bytes: int) -> Workload:
    key = f"abe-peers-{secrets.token_hex(4)}"
    return Workload(
        messages=messages,
        payload_bytes=payload_bytes,
        batch_size=BATCH,
        key=key,
        group=f"{key}-group",
    )


async def _drained(clock: DrainClock, timeout: float) -> Measurement:
    await asyncio.wait_for(clock.done.wait(), timeout)
    return clock.measurement()


async def redis_drain(url: str, workload: Workload, timeout: float) -> Measurement:
    """FastStream's Redis stream subscriber in a group, acking each message after its handler."""
    from faststream import AckPolicy
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url, logger=None)
    clock = DrainClock(workload, lambda count: None)
    stream = StreamSub(workload.key, group=workload.group, consumer="peer-1", last_id="0")

    @broker.subscriber(stream=stream, ack_policy=AckPolicy.ACK)
    async def handle(payload: dict[str, Any]) -> None:
        clock.record(payload)

    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    await broker.connect()
    try:
        for _, payloads in workload.backlog():  # FastStream's own wire format, pipelined
            async with client.pipeline(transaction=False) as pipe:
                for payload in payloads:
                    await broker.publish(payload, stream=workload.key, pipeline=pipe)
                await pipe.execute()
        await broker.start()
        return await _drained(clock, timeout)
    finally:
        await broker.stop()
        await client.delete(workload.key)
        await client.aclose()


async def nats_drain(url: str, workload: Workload, timeout: float) -> Measurement:
    """FastStream's durable JetStream subscriber, acking each after its handler.

    Its push form: faster here than its pull form at the default batch (429 against
    3,266 msgs/s) or at a batch of 100 (2,264), measured on this machine.
    """
    from faststream import AckPolicy
    from faststream.nats import JStream, NatsBroker

    broker = NatsBroker(url.split(","), logger=None)
    clock = DrainClock(workload, lambda count: None)
    stream = JStream(workload.key, subjects=[workload.key])

    @broker.subscriber(
        workload.key,
        stream=stream,
        durable=workload.group,
        ack_policy=AckPolicy.ACK,
    )
    async def handle(payload: dict[str, Any]) -> None:
        clock.record(payload)

    import nats

    client = await nats.connect(url.split(","))
    await client.jetstream().add_stream(name=workload.key, subjects=[workload.key])
    await broker.connect()
    try:
        for _, payloads in workload.backlog():
            await asyncio.gather(
                *(
                    broker.publish(payload, workload.key, stream=workload.key)
                    for payload in payloads
                )
            )
        await broker.start()
        return await _drained(clock, timeout)
    finally:
        await broker.stop()
        await client.jetstream().delete_stream(workload.key)
        await client.close()


async def kafka_drain(bootstrap: str, workload: Workload, timeout: float) -> Measurement:
    """FastStream's Kafka subscriber in a group, committing after each handled message."""
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(bootstrap.split(","), logger=None)
    clock = DrainClock(workload, lambda count: None)

    @broker.subscriber(
        workload.key,
        group_id=workload.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
    )
    async def handle(payload: dict[str, Any]) -> None:
        clock.record(payload)

    await broker.connect()
    try:
        for _, payloads in workload.backlog():  # concurrent sends: aiokafka batches them
            await asyncio.gather(*(broker.publish(payload, workload.key) for payload in payloads))
        await broker.start()
        return await _drained(clock, timeout)
    finally:
        await broker.stop()
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.split(","))
        await admin.start()
        try:
            await admin.delete_topics([workload.key])
        finally:
            await admin.close()


DRAINS: dict[str, tuple[str, Callable[[str, Workload, float], Awaitable[Measurement]]]] = {
    "redis": ("REDIS_URL", redis_drain),
    "nats": ("NATS_URL", nats_drain),
    "kafka": ("KAFKA_BOOTSTRAP_SERVERS", kafka_drain),
}


async def run(brokers: list[str], messages: int, payload_bytes: int, repeat: int) -> dict[str, Any]:
    """Each broker's FastStream drain, `repeat` times; the median run and every run's rate."""
    version = importlib.metadata.version("faststream")
    results: dict[str, Any] = {}
    for name in brokers:
        variable, drain = DRAINS[name]
        address = os.environ.get(variable)
        if not address:
            raise SystemExit(f"bench_peers: {variable} is not set, so {name} cannot be measured")
        runs = []
        for _ in range(repeat):
            measured = await drain(address, _workload(messages, payload_bytes), 120.0)
            runs.append(measured)
            print(f"{name}: faststream {measured.msgs_per_s:,.0f} msgs/s", file=sys.stderr)
        runs.sort(key=lambda measurement: measurement.msgs_per_s)
        median = runs[(len(runs) - 1) // 2]
        results[name] = {**median.as_dict(), "runs": [m.msgs_per_s for m in runs]}
    return {
        "schema": SCHEMA,
        "peer": {"name": "faststream", "version": version},
        "settings": {"messages": messages, "payload_bytes": payload_bytes, "repeat": repeat},
        "drain": results,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="redis,nats,kafka")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    brokers = [name.strip() for name in args.brokers.split(",") if name.strip()]
    unknown = [name for name in brokers if name not in DRAINS]
    if unknown:
        parser.error(f"unknown broker {', '.join(unknown)}; choose from {', '.join(DRAINS)}")
    report = asyncio.run(run(brokers, args.messages, args.payload_bytes, args.repeat))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
