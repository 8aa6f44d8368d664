"""A worker of a crash run: AsyncLoopConsumer over one key, recording every message it handles.

    python -m abe_crash.worker --backend redis --key K --group G --out FILE --status FILE

The backend comes from the environment (``load_backend``). The handler simulates
``--work`` seconds of work, then appends ``number pid attempt time`` to FILE and returns,
so the consumer acknowledges after the line is on disk: a message whose line is there
was handled; a worker killed between the line and the ack duplicates it. Twice a second
the worker replaces STATUS with what it holds (for the stall report). SIGTERM shuts
the consumer down gracefully; SIGKILL is the crash the test is about. Log records of
WARNING and above go to stderr (``ABE_CRASH_LOG_LEVEL=INFO`` shows rebalances and more).
On Kafka the worker also appends each offset commit it completed to ``commits-`` FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from abe import AsyncLoopConsumer, current_delivery, load_backend
from abe.types import MessageQueuePayload
from abe_crash.records import Handled, LineWriter

_STATUS_EVERY = 0.5


def observe_kafka_commits(path: Path, interval: float) -> None:
    """Append ``started finished interval`` for each offset commit aiokafka completes in this
    process (only read: a Kafka worker killed duplicates what it handled since its last one)."""
    from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

    commits = LineWriter(path)
    commit = AIOKafkaConsumer.commit

    async def observed(self: object, *args: object, **kwargs: object) -> object:
        started = time.monotonic()
        result = await commit(self, *args, **kwargs)
        commits.write(f"{started:.6f} {time.monotonic():.6f} {interval:g}\n")
        return result

    AIOKafkaConsumer.commit = observed


def write_status(path: Path, consumer: AsyncLoopConsumer, running: set[int]) -> None:
    """Replace `path` with the consumer's counts and the messages its handlers hold now."""
    subscription = getattr(consumer, "_subscription", None)  # diagnostics only
    status = {
        "pid": os.getpid(),
        "at": time.monotonic(),
        "running": consumer.running,
        "processed": consumer.stats.processed,
        "retried": consumer.stats.retried,
        "dead_lettered": consumer.stats.dead_lettered,
        "handling": sorted(running),
        "held": getattr(subscription, "held", None),
    }
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(status))
    os.replace(scratch, path)


async def work(args: argparse.Namespace) -> None:
    """Run the consumer until SIGTERM, recording each handled message."""
    out = LineWriter(Path(args.out))
    status = Path(args.status)
    pid = os.getpid()
    backend = load_backend(args.backend)
    if args.backend == "kafka":
        interval = float(getattr(backend.settings, "commit_interval", 0.0))
        observe_kafka_commits(Path(args.out).with_name(f"commits-{Path(args.out).name}"), interval)
    consumer = AsyncLoopConsumer(
        backend,
        args.group,
        keys=[args.key],
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
    )
    running: set[int] = set()

    async def handle(payload: MessageQueuePayload) -> None:
        number = int(payload["n"])
        attempt = current_delivery().attempt
        running.add(number)
        try:
            if args.work > 0:
                await asyncio.sleep(args.work)  # the work a real handler would do
            out.write(Handled(number, pid, attempt, time.monotonic()).line())
        finally:
            running.discard(number)

    async def report() -> None:
        while True:
            write_status(status, consumer, running)
            await asyncio.sleep(_STATUS_EVERY)  # a periodic snapshot: no event to wait for

    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    loop.add_signal_handler(
        signal.SIGTERM, lambda: stopping.append(loop.create_task(consumer.shutdown()))
    )
    reporter = loop.create_task(report())
    try:
        async with backend:
            await consumer.run(handle)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await asyncio.gather(*stopping, return_exceptions=True)
        write_status(status, consumer, running)
        out.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and consume until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.worker")
    parser.add_argument("--backend", required=True, help="backend name for load_backend()")
    parser.add_argument("--key", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--work", type=float, default=0.005, help="seconds per message")
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--out", required=True, help="file of handled messages")
    parser.add_argument("--status", required=True, help="file replaced with the worker's state")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("ABE_CRASH_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(work(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
