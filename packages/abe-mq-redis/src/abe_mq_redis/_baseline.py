"""The `abe bench` workloads written with redis-py alone: what abe's overhead is measured against.

The same server and connection options as the backend (so the ratio is abe's own cost),
its own connection pool, the payload bytes abe would send:

    publish       one awaited XADD per message, field `data` = the JSON
    publish_many  XADDs in a non-transactional pipeline per batch
    end_to_end    XREADGROUP (COUNT 100, BLOCK 1 s) and one awaited XACK per message,
                  while one publisher XADDs one message at a time
    drain_ack_each  the backlog XADDed first (a pipeline per batch), then XGROUP CREATE
                  (id 0), XREADGROUP (BLOCK 1 s) over every key for at most 100 entries in
                  all (COUNT 100 over one key, COUNT 1 over 100: abe's default prefetch, since
                  COUNT applies to each key) and one awaited XACK per message
    drain_batched   the same, with one XACK per stream of each read naming all its ids, the
                  XACKs of one read in one pipeline

It deletes the streams it wrote when closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis
from redis.asyncio import ConnectionPool, Redis

from abe.benchmarking import (
    Arrivals,
    DrainClock,
    Measurement,
    Progress,
    Workload,
    bench_payload,
)
from abe_mq_redis._client import connection_kwargs
from abe_mq_redis._settings import RedisSettings

__all__ = ["RawRedisBaseline"]

_READ_COUNT = 100
"""Entries one raw XREADGROUP asks for in all (abe's default prefetch), shared by the keys."""

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class RawRedisBaseline:
    """`abe.benchmarking.RawBaseline` for Redis Streams, with redis-py's own calls."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._client: Redis | None = None
        self._keys: list[str] = []

    @property
    def name(self) -> str:
        """The client library and its version."""
        return f"redis-py {redis.__version__}"

    async def _connect(self, *keys: str) -> Redis:
        if self._client is None:
            timeout = self._settings.operation_timeout + 1.0  # outlasts the 1 s BLOCK below
            pool = ConnectionPool(**connection_kwargs(self._settings, socket_timeout=timeout))
            self._client = Redis(connection_pool=pool)
        self._keys.extend(keys)
        await self._client.ping()  # connected before any clock starts
        return self._client

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        """One awaited XADD per message."""
        client = await self._connect(workload.key)
        key, size = workload.key, workload.payload_bytes
        clock = time.perf_counter
        latencies: list[float] = []
        started = clock()
        for seq in range(workload.messages):
            payload = bench_payload(seq, size)
            before = clock()
            await client.xadd(key, {"data": _encode(payload)})
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        """XADDs in a non-transactional pipeline, one pipeline per batch."""
        client = await self._connect(workload.key)
        key, size = workload.key, workload.payload_bytes
        clock = time.perf_counter
        latencies: list[float] = []
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            batch = [bench_payload(seq, size) for seq in range(first, last)]
            before = clock()
            pipe = client.pipeline(transaction=False)
            for payload in batch:
                pipe.xadd(key, {"data": _encode(payload)})
            await pipe.execute()
            latencies.append(clock() - before)
            progress(last)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        """XREADGROUP and one XACK per message, while one publisher XADDs one at a time."""
        client = await self._connect(workload.key)
        key, group, size = workload.key, workload.group, workload.payload_bytes
        await client.xgroup_create(key, group, id="0", mkstream=True)
        arrivals = Arrivals(workload, progress)

        async def receive() -> None:
            while not arrivals.complete:
                reply: Any = await client.xreadgroup(
                    group, "raw", {key: ">"}, count=100, block=1000
                )
                for _stream, entries in _streams(reply):
                    for entry_id, fields in entries:
                        arrivals.record(json.loads(fields[b"data"]))
                        await client.xack(key, group, entry_id)

        async def send() -> None:
            for seq in range(workload.messages):
                await client.xadd(key, {"data": _encode(bench_payload(seq, size))})
                await asyncio.sleep(0)

        return await arrivals.measure(send, receive)

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog read with XREADGROUP, one awaited XACK per message."""
        return await self._drain(workload, progress, ack_each=True)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog read with XREADGROUP, one XACK per stream for each read."""
        return await self._drain(workload, progress, ack_each=False)

    async def _drain(
        self, workload: Workload, progress: Progress, *, ack_each: bool
    ) -> Measurement:
        client = await self._connect(*workload.all_keys)
        group = workload.group
        for key, payloads in workload.backlog():  # published before the clock starts
            pipe = client.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(key, {"data": _encode(payload)})
            await pipe.execute()
        for key in workload.all_keys:
            await client.xgroup_create(key, group, id="0", mkstream=True)
        streams: dict[Any, Any] = dict.fromkeys(workload.all_keys, ">")
        count = max(1, _READ_COUNT // len(streams))  # COUNT is per key
        clock = DrainClock(workload, progress)
        while not clock.complete:
            reply: Any = await client.xreadgroup(group, "raw", streams, count=count, block=1000)
            read: list[tuple[Any, list[Any]]] = []  # (stream, entry ids)
            for stream, entries in _streams(reply):
                for entry_id, fields in entries:
                    clock.record(json.loads(fields[b"data"]))
                    if ack_each:
                        await client.xack(stream, group, entry_id)
                if entries and not ack_each:
                    read.append((stream, [entry_id for entry_id, _ in entries]))
            await _ack(client, group, read)
        return clock.measurement()

    async def close(self) -> None:
        """Delete the streams this baseline wrote and release its connections."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self._keys:
                await client.delete(*self._keys)
        finally:
            await client.aclose(close_connection_pool=True)


async def _ack(client: Redis, group: str, read: list[tuple[Any, list[Any]]]) -> None:
    """One XACK per stream naming all its ids; several streams' XACKs in one pipeline."""
    if len(read) == 1:
        await client.xack(read[0][0], group, *read[0][1])
    elif read:
        pipe = client.pipeline(transaction=False)
        for stream, ids in read:
            pipe.xack(stream, group, *ids)
        await pipe.execute()


def _streams(reply: Any) -> list[tuple[Any, list[Any]]]:
    """XREADGROUP's reply as [(stream, entries)], whichever shape redis-py returned."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3 shape: {stream: [entries]}
        return [(stream, entries[0] if entries else []) for stream, entries in reply.items()]
    return [(stream, entries) for stream, entries in reply]
