"""Scale-out and bounded memory of abe workers on the configured backend (issue 13, items 3-4).

`scale-out`: a backlog on one key (Kafka: as many partitions as `ABE_KAFKA_PARTITIONS`),
drained by 1, then by P worker processes of one group running `AsyncLoopConsumer` at its
defaults; rate = (N - 1) / (last handled - first handled) over every process, and the CPU
seconds the workers used (user + system, from the kernel's accounting of each child).

`memory`: a backlog of 100,000 messages and one slow worker (`AsyncLoopConsumer` at its
default prefetch, each handler sleeping `--handler-ms`); over `--seconds`, the peak
resident set size of the process against what it was once joined, and the most messages
the worker held (at most its prefetch bound).

Prints one JSON document. Runs against whatever QUEUE_BACKEND and its variables name:
`QUEUE_BACKEND=redis python tools/measure_workers.py scale-out --processes 1,2`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import secrets
import sys
import time
from typing import Any

from abe import AsyncLoopConsumer, load_backend
from abe.benchmarking import bench_payload

BATCH = 500


def _rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _publish_backlog(key: str, messages: int, payload_bytes: int) -> None:
    async with load_backend() as backend:
        for first in range(0, messages, BATCH):
            count = min(BATCH, messages - first)
            payloads = [bench_payload(first + n, payload_bytes) for n in range(count)]
            await backend.publish_many(key, payloads)


def _worker(key: str, group: str, total: int, handled: Any, times: Any) -> None:
    """One worker process: drain `key` in `group` until every message has been handled."""

    async def work() -> None:
        async with load_backend() as backend:
            consumer = AsyncLoopConsumer(backend, group, keys=[key])
            finished = asyncio.Event()

            async def handle(payload: dict[str, Any]) -> None:
                now = time.monotonic()
                with handled.get_lock():
                    handled.value += 1
                    count = handled.value
                    times[0] = times[0] or now
                    times[1] = max(times[1], now)
                if count >= total:
                    finished.set()

            running = asyncio.ensure_future(consumer.run(handle))
            while not finished.is_set() and handled.value < total and not running.done():
                # other processes may finish the backlog: look at the shared count too
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(finished.wait(), 0.05)
            await consumer.shutdown()
            await running

    asyncio.run(work())


def scale_out(processes: int, messages: int, payload_bytes: int) -> dict[str, Any]:
    """Drain a backlog with `processes` worker processes of one group."""
    key = f"abe-workers-{secrets.token_hex(4)}"
    group = f"{key}-group"
    asyncio.run(_publish_backlog(key, messages, payload_bytes))
    context = multiprocessing.get_context("spawn")
    handled = context.Value("q", 0)
    times = context.Array("d", [0.0, 0.0], lock=False)  # guarded by handled's lock
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = [
        context.Process(target=_worker, args=(key, group, messages, handled, times))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = times[1] - times[0]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    asyncio.run(_delete(key))
    return {
        "processes": processes,
        "messages": messages,
        "handled": handled.value,
        "seconds": seconds,
        "msgs_per_s": (messages - 1) / seconds if seconds > 0 else 0.0,
        "cpu_seconds": cpu,
        "cpu_per_message_us": cpu / messages * 1e6,
    }


async def _delete(key: str) -> None:
    async with load_backend() as backend:
        await backend.delete_keys([key])


async def memory(
    messages: int, payload_bytes: int, handler_ms: float, seconds: float, concurrency: int
) -> Any:
    """RSS of one slow worker (AsyncLoopConsumer at its default prefetch) over a large
    backlog, against its RSS once joined, and the most messages it held."""
    key = f"abe-memory-{secrets.token_hex(4)}"
    await _publish_backlog(key, messages, payload_bytes)
    async with load_backend() as backend:
        most_held = 0
        handled = 0
        consumer = AsyncLoopConsumer(backend, f"{key}-group", keys=[key], concurrency=concurrency)
        joined = asyncio.Event()

        async def handle(payload: dict[str, Any]) -> None:
            nonlocal most_held, handled
            joined.set()
            most_held = max(most_held, backend.held_messages)
            await asyncio.sleep(handler_ms / 1000)
            handled += 1

        running = asyncio.ensure_future(consumer.run(handle))
        await joined.wait()
        joined_rss = _rss_bytes()
        peak_rss = joined_rss
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at and not running.done():
            await asyncio.sleep(0.5)  # a sampling period: there is no event to wait for
            peak_rss = max(peak_rss, _rss_bytes())
        await consumer.shutdown()
        await running
        await backend.delete_keys([key])
    return {
        "backlog": messages,
        "payload_bytes": payload_bytes,
        "handler_ms": handler_ms,
        "concurrency": concurrency,
        "handled": handled,
        "prefetch_bound": consumer.prefetch,
        "most_held": most_held,
        "rss_joined_mib": joined_rss / 2**20,
        "rss_peak_mib": peak_rss / 2**20,
        "rss_growth_mib": (peak_rss - joined_rss) / 2**20,
        "backlog_mib": messages * payload_bytes / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options and print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scale = commands.add_parser("scale-out")
    scale.add_argument("--processes", default="1,2")
    scale.add_argument("--messages", type=int, default=20_000)
    scale.add_argument("--payload-bytes", type=int, default=256)
    held = commands.add_parser("memory")
    held.add_argument("--messages", type=int, default=100_000)
    held.add_argument("--payload-bytes", type=int, default=256)
    held.add_argument("--handler-ms", type=float, default=10.0)
    held.add_argument("--seconds", type=float, default=10.0)
    held.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    backend = os.environ.get("QUEUE_BACKEND", "memory")
    if args.command == "scale-out":
        runs = [
            scale_out(int(count), args.messages, args.payload_bytes)
            for count in args.processes.split(",")
        ]
        report: dict[str, Any] = {"backend": backend, "scale_out": runs}
    else:
        measured = asyncio.run(
            memory(
                args.messages, args.payload_bytes, args.handler_ms, args.seconds, args.concurrency
            )
        )
        report = {"backend": backend, "memory": measured}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
