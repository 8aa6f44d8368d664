"""How fast a raw aiokafka group consumer and abe drain Tansu on moto's S3 (the crash storage).

    python tests-integration/crash/kafka_storage_drain.py [--messages N] [--cap S] [--abe-first]

Run it in the crash session's venv (`nox -s crash` installs what it needs). It starts moto
(atomic PutObject) and one Tansu broker storing in a bucket there, publishes the messages
one awaited send at a time as the crash producer does (one S3 object per produce), then
drains the topic twice, each time in a new group, for at most ``--cap`` seconds: with a
raw aiokafka consumer using abe's own consumer options (getmany, one commit per batch),
and with abe's AsyncLoopConsumer at concurrency 8 (the crash workers'). It prints how many
each handled per 10 s. It answers one question: is the slow Kafka drain of the 10,000-
message crash run abe's or the storage's (docs/faults.md)?
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from abe_brokers.servers import KafkaServer, MotoServer

TOPIC = "storage-drain"


def per_ten_seconds(stamps: list[float], start: float) -> list[int]:
    """How many of ``stamps`` fall in each 10 s window from ``start``."""
    counts: list[int] = []
    for stamp in stamps:
        window = int((stamp - start) // 10)
        counts += [0] * (window + 1 - len(counts))
        counts[window] += 1
    return counts


async def publish(count: int) -> float:
    """Publish ``count`` ~250-byte messages one awaited publish at a time; the seconds it took."""
    from abe import load_backend

    started = time.monotonic()
    async with load_backend() as backend:
        for number in range(count):
            await backend.publish(TOPIC, {"n": number, "pad": "x" * 200})
    return time.monotonic() - started


async def drain_raw(count: int, cap: float) -> list[float]:
    """A raw aiokafka member of group 'raw' with abe's consumer options: handled-at times."""
    from aiokafka import AIOKafkaConsumer

    from abe_mq_kafka._settings import KafkaSettings

    options = KafkaSettings.from_env().consumer_options()
    consumer = AIOKafkaConsumer(TOPIC, group_id="raw", **options)
    await consumer.start()
    stamps: list[float] = []
    start = time.monotonic()
    try:
        while len(stamps) < count and time.monotonic() - start < cap:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                stamps += [time.monotonic()] * len(records)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return stamps


async def drain_abe(count: int, cap: float) -> list[float]:
    """abe's AsyncLoopConsumer (concurrency 8) in group 'abe': handled-at times."""
    from abe import AsyncLoopConsumer, load_backend

    stamps: list[float] = []
    done = asyncio.Event()

    async def handle(message: object) -> None:
        stamps.append(time.monotonic())
        if len(stamps) >= count:
            done.set()

    async with load_backend() as backend:
        consumer = AsyncLoopConsumer(backend, "abe", keys=[TOPIC], concurrency=8)
        worker = asyncio.create_task(consumer.run(handle))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), cap)
        await consumer.shutdown()
        await worker
    return stamps


async def main(arguments: argparse.Namespace) -> None:
    """Start the storage and the broker, publish, drain both ways, print the figures."""
    work = Path(tempfile.mkdtemp(prefix="abe-kafka-storage-"))
    (work / "moto").mkdir()
    moto = MotoServer(work / "moto")
    moto.start()
    tansu = KafkaServer(work / "tansu", s3=moto)
    tansu.start()
    # Tansu on S3 refuses InitProducerId, as in the crash test (tests-integration/crash).
    os.environ.update(
        QUEUE_BACKEND="kafka", KAFKA_BOOTSTRAP_SERVERS=tansu.bootstrap, ABE_KAFKA_IDEMPOTENT="false"
    )
    try:
        seconds = await publish(arguments.messages)
        print(f"published {arguments.messages:,} in {seconds:.1f} s", flush=True)
        drains = [("abe AsyncLoopConsumer c=8", drain_abe), ("raw aiokafka", drain_raw)]
        for name, drain in drains if arguments.abe_first else reversed(drains):
            start = time.monotonic()
            stamps = await drain(arguments.messages, arguments.cap)
            took = time.monotonic() - start
            print(f"{name}: {len(stamps):,} handled in {took:.1f} s", flush=True)
            print(f"  per 10 s: {per_ten_seconds(stamps, start)}", flush=True)
    finally:
        tansu.stop()
        moto.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--cap", type=float, default=150.0, help="seconds each drain may take")
    parser.add_argument("--abe-first", action="store_true", help="drain with abe first")
    asyncio.run(main(parser.parse_args()))
