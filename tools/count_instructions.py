"""Instructions a message costs, counted by valgrind: abe's drains and publishes against aiokafka.

On a shared 2-core machine single drains of one cell move by 10 to 30% and more from run
to run, so a few percent of CPU cannot be seen in messages a second. Valgrind's callgrind
counts instructions instead, the same from run to run. For each count of messages this
publishes a backlog to a new key (outside valgrind), then drains it in a process under
valgrind; the difference between two counts, over the difference in messages, is the
cost of one message, with starting, joining and stopping left out. docs/benchmarks.md
cites it:

    QUEUE_BACKEND=kafka python tools/count_instructions.py --side concurrent

Sides: `consume` (the `consume()` iterator), `concurrent` (AsyncLoopConsumer, 16
handlers) and `raw` (aiokafka's `getmany()` and one commit a batch, as the Kafka raw
baseline drains; Kafka only). `publish` and `raw_publish` run `abe bench`'s publish
workload (one message at a time) of abe and of the provider's raw baseline: any broker
with one. The drains' abe sides run on any broker abe reaches. Under valgrind a
process runs about 50 times slower: give Kafka a long session (`ABE_KAFKA_SESSION_TIMEOUT=30`)
so that the group does not rebalance while it reads. The keys it made are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import subprocess
import sys
from typing import Any

from abe import AsyncLoopConsumer, load_backend
from abe.benchmarking import AbeWorkloads, Workload, bench_payload
from abe.provider import BaseBackend

SIDES = ("consume", "concurrent", "raw", "publish", "raw_publish")


async def fill(key: str, messages: int) -> None:
    """Publish `messages` 256-byte bench payloads to `key`, 100 at a time."""
    async with load_backend() as backend:
        for first in range(0, messages, 100):
            batch = [bench_payload(seq, 256) for seq in range(first, min(messages, first + 100))]
            await backend.publish_many(key, batch)


async def delete(key: str) -> None:
    """Delete the key a count made."""
    async with load_backend() as backend:
        await backend.delete_keys([key])


async def publish(side: str, key: str, messages: int) -> None:
    """Publish `messages` one at a time with `abe bench`'s publish workload, abe's or raw."""
    async with load_backend() as backend:
        assert isinstance(backend, BaseBackend)
        raw = backend.raw_baseline()
        if raw is None:
            raise SystemExit(f"the {backend.name} backend has no raw baseline")
        run = AbeWorkloads(backend).publish if side == "publish" else raw.publish
        workload = Workload(
            messages=messages, payload_bytes=256, batch_size=100, key=key, group=key, keys=(key,)
        )
        try:
            await run(workload, _no_progress)
        finally:
            await raw.close()


def _no_progress(done: int) -> None:
    """The workloads report progress; nobody watches it here."""


async def drain(side: str, key: str, messages: int) -> None:
    """Read `messages` from `key` in a new group, the way `side` does, then stop."""
    group = f"count-{secrets.token_hex(4)}"
    seen = 0
    done = asyncio.Event()

    def record(payload: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen >= messages:
            done.set()

    async with load_backend() as backend:
        if side == "consume":
            async for payload in backend.consume(group=group, keys=key):
                record(payload)
                if done.is_set():
                    break
        elif side == "concurrent":

            async def handle(payload: dict[str, Any]) -> None:
                record(payload)

            consumer = AsyncLoopConsumer(backend, group, keys=key, concurrency=16)
            running = asyncio.ensure_future(consumer.run(handle))
            await done.wait()
            await consumer.shutdown()
            await running
        else:
            from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 (the raw side, Kafka only)

            options = backend.settings.consumer_options()  # type: ignore[attr-defined]
            raw = AIOKafkaConsumer(key, group_id=group, **options)
            await raw.start()
            try:
                while not done.is_set():
                    batches = await raw.getmany(timeout_ms=1000)
                    for records in batches.values():
                        for entry in records:
                            record(json.loads(entry.value))
                    if batches:
                        await raw.commit()
            finally:
                await raw.stop()


def count(side: str, messages: int) -> int:
    """Instructions of a process that drains a new backlog of `messages`."""
    key = f"abe-count-{secrets.token_hex(4)}"
    if "publish" not in side:
        asyncio.run(fill(key, messages))
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, __file__, "--drain", side, key, str(messages)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        asyncio.run(delete(key))
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no instruction count:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES, default="consume")
    parser.add_argument(
        "--messages",
        type=int,
        nargs=2,
        help="two counts (default 6000 18000, publishing 1000 3000)",
    )
    parser.add_argument("--drain", nargs=3, help=argparse.SUPPRESS)  # the process measured
    args = parser.parse_args()
    if args.drain:
        side, key, messages = args.drain
        run = publish if "publish" in side else drain
        asyncio.run(run(side, key, int(messages)))
        return
    fewer, more = args.messages or ((1000, 3000) if "publish" in args.side else (6000, 18000))
    spent = count(args.side, more) - count(args.side, fewer)
    print(f"{args.side}: {spent / (more - fewer):,.0f} instructions a message")


if __name__ == "__main__":
    main()
