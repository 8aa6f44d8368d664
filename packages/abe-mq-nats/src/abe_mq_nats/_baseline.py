"""The `abe bench` workloads written directly with nats-py, as an application would without abe.

Each workload sends the same JSON bodies as abe (`bench_payload`, encoded inside the
timed region as abe's `publish` does) with a `Nats-Msg-Id` header, so the server does
the same deduplication work for both sides:

    publish       awaited `js.publish()` per message
    publish_many  the batch encoded, then `js.publish_async()` for each of its messages and
                  the acks gathered: like abe, which checks a whole batch before sending any
                  of it so that a bad payload publishes none (contract item 16), and like
                  the other providers' baselines (a loop sending each message as it encodes
                  it overlaps encoding with the server's storing, and leaves a partial batch)
    end_to_end    a durable pull consumer: `fetch(batch=100)` + `msg.ack()`, while one
                  publisher sends with awaited `js.publish()`
    drain_ack_each  the backlog published first (`publish_async()`, a batch's acks
                  gathered), then a durable pull consumer per key (explicit acks):
                  `fetch()` and `await msg.ack()` for each message; the fetches of all
                  keys together ask for at most 100 messages (abe's default prefetch:
                  `fetch(batch=100)` over one key, `fetch(batch=1)` each over 100)
    drain_batched   the same with `AckPolicy.ALL`: one ack, of each batch's last message

It connects with the backend's own settings (same servers, credentials and TLS) before
any clock starts, creates a stream for each workload key, and deletes those streams
when closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api

from abe.benchmarking import (
    Arrivals,
    DrainClock,
    Measurement,
    Progress,
    Workload,
    bench_payload,
)
from abe_mq_nats._client import stream_name
from abe_mq_nats._settings import NatsSettings

__all__ = ["FETCH_BATCH", "RawNatsBaseline"]

FETCH_BATCH = 100
"""Messages one raw `fetch()` asks for (abe's default prefetch)."""
_FETCH_TIMEOUT = 1.0


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class RawNatsBaseline:
    """nats-py alone, on the servers of `settings`."""

    def __init__(self, settings: NatsSettings) -> None:
        self._settings = settings
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._streams: list[str] = []

    @property
    def name(self) -> str:
        try:
            return f"nats-py {version('nats-py')}"
        except PackageNotFoundError:  # pragma: no cover - nats-py is a dependency
            return "nats-py"

    async def _prepare(self, key: str) -> JetStreamContext:
        """Connect (once) and create the stream of `key`; all before the clock starts."""
        if self._js is None:
            settings = self._settings
            options: dict[str, Any] = {
                "servers": list(settings.servers),
                "name": "abe-bench-raw",
                "connect_timeout": settings.connect_timeout,
                "allow_reconnect": False,
                "tls": settings.tls_context(),
            }
            options.update(settings.credentials())
            client = NatsClient()
            await client.connect(**options)
            self._client = client
            self._js = client.jetstream(timeout=settings.operation_timeout)
        name = stream_name(key)
        await self._js.add_stream(name=name, subjects=[key], storage=api.StorageType.FILE)
        self._streams.append(name)
        return self._js

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        js = await self._prepare(workload.key)
        key, size = workload.key, workload.payload_bytes
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for seq in range(workload.messages):
            payload = bench_payload(seq, size)
            before = clock()
            await js.publish(key, _encode(payload), headers={"Nats-Msg-Id": f"raw-{seq}"})
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        js = await self._prepare(workload.key)
        key, size = workload.key, workload.payload_bytes
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            batch = [bench_payload(seq, size) for seq in range(first, last)]
            before = clock()
            bodies = [_encode(payload) for payload in batch]  # all, before any is sent (as abe)
            acks = [
                await js.publish_async(key, body, headers={"Nats-Msg-Id": f"raw-{seq}"})
                for seq, body in zip(range(first, last), bodies, strict=True)
            ]
            await asyncio.gather(*acks)
            del bodies, acks  # freed when sent, as abe frees its bodies on return
            latencies.append(clock() - before)
            progress(last)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        js = await self._prepare(workload.key)
        key, size, total = workload.key, workload.payload_bytes, workload.messages
        subscription = await js.pull_subscribe(key, durable=workload.group, stream=stream_name(key))
        arrivals = Arrivals(workload, progress)

        async def receive() -> None:
            while not arrivals.complete:
                try:
                    messages = await subscription.fetch(FETCH_BATCH, timeout=_FETCH_TIMEOUT)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    arrivals.record(json.loads(message.data))
                    await message.ack()

        async def send() -> None:
            for seq in range(total):
                body = _encode(bench_payload(seq, size))
                await js.publish(key, body, headers={"Nats-Msg-Id": f"raw-{seq}"})
                await asyncio.sleep(0)

        try:
            return await arrivals.measure(send, receive)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog fetched in batches, `await msg.ack()` for each message."""
        return await self._drain(workload, progress, api.AckPolicy.EXPLICIT)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog fetched in batches, one ack of each batch's last (`AckPolicy.ALL`)."""
        return await self._drain(workload, progress, api.AckPolicy.ALL)

    async def _drain(
        self, workload: Workload, progress: Progress, policy: api.AckPolicy
    ) -> Measurement:
        for key in workload.all_keys:
            js = await self._prepare(key)
        for key, payloads in workload.backlog():  # published before the clock starts
            acks = [
                await js.publish_async(
                    key, _encode(payload), headers={"Nats-Msg-Id": f"raw-{payload['seq']}"}
                )
                for payload in payloads
            ]
            await asyncio.gather(*acks)
        config = api.ConsumerConfig(
            ack_policy=policy,
            ack_wait=self._settings.redelivery_timeout,
            max_ack_pending=-1,
        )
        subscriptions = [
            await js.pull_subscribe(
                key, durable=workload.group, stream=stream_name(key), config=config
            )
            for key in workload.all_keys
        ]
        clock = DrainClock(workload, progress)
        batch = max(1, FETCH_BATCH // len(subscriptions))  # held in all: at most abe's bound

        async def drain(subscription: JetStreamContext.PullSubscription) -> None:
            while not clock.complete:
                try:
                    messages = await subscription.fetch(batch, timeout=_FETCH_TIMEOUT)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    clock.record(json.loads(message.data))
                    if policy is api.AckPolicy.EXPLICIT:
                        await message.ack()
                if messages and policy is api.AckPolicy.ALL:
                    await messages[-1].ack()

        try:
            await clock.run_until_complete([drain(subscription) for subscription in subscriptions])
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        return clock.measurement()

    async def close(self) -> None:
        """Delete the streams the baseline created and close its connection."""
        client, js = self._client, self._js
        self._client = self._js = None
        if client is None or js is None:
            return
        try:
            for name in self._streams:
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        finally:
            self._streams.clear()
            await client.close()
