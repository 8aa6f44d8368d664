"""What is still on the broker after a crash run: to say why a message was never handled.

    python -m abe_crash.inspect --backend kafka --key K --out FILE

Reads ``K`` and ``K-dlq`` each with a group of its own (a new group starts from the oldest
retained message) until nothing came for ``--idle`` seconds, and writes one JSON object
a line: which key, the message number, id and attempt, and for a dead letter its
``abe-error`` and ``abe-attempts``; and for each key how many it read and whether it read
to the end. A lost message found on ``K`` was kept by the broker but never handed to a
worker; one on neither key, read to their end, is gone from the broker. Run with the
workers' environment, after they stopped. (On SQS reading a queue takes what is left.)

With ``--raw FILE`` (Kafka only) it first reads the topic with aiokafka itself, no group
and no abe: every partition from its first offset to its end, one line per record with
its partition, offset and ``abe-id``, so a message abe's receiver misses can be told
from one the broker does not return. With ``--tansu-s3`` (the variables of a Tansu's S3
storage in the environment: ``AWS_ENDPOINT``, ``AWS_*``, ``ABE_CRASH_TANSU_BUCKET``) it
also lists the batch objects Tansu stored for the topic: each one's base offset and
record count, and each partition's watermark, so overlapping batches show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import IO

from abe import load_backend
from abe.backends.message_queue.base.headers import HEADER_ATTEMPTS, HEADER_ERROR
from abe.backends.message_queue.base.interface import Backend

GROUP = "crash-inspect"


async def read_key(
    backend: Backend, key: str, out: IO[str], *, first: float, idle: float, until: float
) -> None:
    """Write every message a new group reads from `key`, acknowledging each; then a line
    ``{"key": ..., "read": n, "complete": bool}``.

    Complete means the key was read to its end: messages came, then none for `idle`
    seconds. Nothing within `first` seconds (a group may take that long to join) is not
    proof of an empty key, since a consumer that cannot read sees nothing either.
    """
    which = "dead-letter" if key.endswith("-dlq") else "key"
    read, complete = 0, False
    async with backend.subscribe(group=GROUP, keys=[key]) as subscription:
        while time.monotonic() < until:
            wait = min(idle if read else first, max(0.1, until - time.monotonic()))
            try:  # test code, not provider source: wait_for is fine here
                delivery = await asyncio.wait_for(subscription.__anext__(), wait)
            except (asyncio.TimeoutError, StopAsyncIteration):
                complete = read > 0 and time.monotonic() < until
                break
            record = {
                "key": which,
                "n": delivery.payload.get("n"),
                "id": delivery.id,
                "attempt": delivery.attempt,
                "error": delivery.headers.get(HEADER_ERROR),
                "attempts": delivery.headers.get(HEADER_ATTEMPTS),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            read += 1
            await delivery.ack()
    out.write(json.dumps({"key": which, "read": read, "complete": complete}) + "\n")


async def read_raw(bootstrap: str, key: str, out: IO[str], *, limit: float) -> None:
    """Write every record on topic `key`, read by aiokafka from each partition's start to its
    end offset; then ``{"raw_end": {partition: end offset}, "complete": bool}``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    until = time.monotonic() + limit
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=1000,
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata of every topic
        partitions = sorted(consumer.partitions_for_topic(key) or ())
        tps = [TopicPartition(key, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left and time.monotonic() < until:
            batches = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    headers = {n: (v or b"").decode("utf-8", "replace") for n, v in record.headers}
                    try:
                        number = json.loads(record.value).get("n")
                    except (ValueError, AttributeError):
                        number = None
                    line = {
                        "partition": tp.partition,
                        "offset": record.offset,
                        "id": headers.get("abe-id"),
                        "attempt": headers.get("abe-attempt", "1"),
                        "n": number,
                    }
                    out.write(json.dumps(line) + "\n")
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        complete = not left
        ended = {tp.partition: ends[tp] for tp in tps}
        out.write(json.dumps({"raw_end": ended, "complete": complete}) + "\n")
    finally:
        await consumer.stop()


def list_tansu_batches(key: str, out: IO[str]) -> None:
    """Write, for topic `key` in Tansu's S3 storage, each partition's watermark and each
    stored batch: its base offset (the object's name), record count and last offset delta."""
    from botocore.session import get_session

    client = get_session().create_client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = os.environ["ABE_CRASH_TANSU_BUCKET"]
    names: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        names += [item["Key"] for item in page.get("Contents", ())]
    for name in sorted(n for n in names if f"/topics/{key}/partitions/" in n):
        body = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        partition = int(name.split("/partitions/")[1].split("/")[0])
        if name.endswith("watermark.json"):
            line = {"partition": partition, "watermark": json.loads(body)}
        else:  # a Kafka record batch: lastOffsetDelta at byte 23, record count at byte 57
            delta, count = (
                struct.unpack_from(">i", body, 23)[0],
                struct.unpack_from(">i", body, 57)[0],
            )
            base = int(name.rsplit("/", 1)[1].split(".")[0])
            line = {"partition": partition, "batch": base, "records": count, "delta": delta}
        out.write(json.dumps(line) + "\n")


async def inspect(
    backend_name: str, key: str, path: Path, *, first: float, idle: float, limit: float
) -> None:
    """Read `key` and its dead-letter key into `path`, within `limit` seconds in all."""
    until = time.monotonic() + limit
    async with load_backend(backend_name) as backend:
        with path.open("w") as out:
            for name in (f"{key}-dlq", key):  # the few dead letters first
                await read_key(backend, name, out, first=first, idle=idle, until=until)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and read both keys."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.inspect")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--raw", help="kafka: also read the topic with aiokafka into this file")
    parser.add_argument("--tansu-s3", action="store_true", help="with --raw: list Tansu's batches")
    parser.add_argument("--first", type=float, default=30.0, help="longest wait for a first")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds with nothing: done")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds in all")
    args = parser.parse_args(argv)
    where = Path(args.out)
    times = {"first": args.first, "idle": args.idle, "limit": args.limit}
    if args.raw:  # first: what the broker returns, before any group of abe's reads the topic
        with Path(args.raw).open("w") as raw:
            bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
            asyncio.run(read_raw(bootstrap, args.key, raw, limit=args.limit))
            if args.tansu_s3:
                list_tansu_batches(args.key, raw)
    asyncio.run(inspect(args.backend, args.key, where, **times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
