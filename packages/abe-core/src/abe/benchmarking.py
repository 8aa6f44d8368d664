"""The benchmark workloads of `abe bench`, as abe runs them and as a raw client must.

    publish           `messages` awaited `publish()` calls, one after another; latency per call.
    publish_many      the same number of messages in batches of `batch_size`; latency per batch.
    end_to_end        a subscriber (receive, then ack) runs while a publisher sends `messages`
                      one at a time; latency per message = receive time - publish time, taken
                      from the `time.perf_counter()` the publisher put in the payload.
    drain             a backlog of `messages` published first, then drained by one worker
                      with the `consume()` iterator (acks on next); rate = (N - 1) / (last
                      handled - first handled), so connecting and joining a group are left
                      out. Raw side: the best hand-written loop, acks in batches.
    drain_consumer    the backlog drained by `AsyncLoopConsumer` at its default settings.
                      Raw side: the plainest loop, one awaited ack per message.
    drain_concurrent  the backlog drained by `AsyncLoopConsumer` with `concurrency` handlers.
                      Raw side: the batched loop again.

Every workload spreads its messages over `keys` keys (one by default): publishes go round
the keys, and a drain reads them all.

A provider may ship the same three workloads written directly with its client library,
so that `abe bench` reports what abe costs over the raw client, in the same invocation
and on the same broker. It returns one from its backend's `raw_baseline()` (which is
`None` by default, meaning "no raw client"):

    class RedisBackend(BaseBackend):
        def raw_baseline(self) -> RawBaseline:
            return RawRedisBaseline(self.settings)  # the same broker, its own connection

A raw baseline satisfies the `RawBaseline` protocol: a `name`, one async method per
workload taking a `Workload` and a progress callback and returning a `Measurement`, and
`close()`. It uses only the key and group the `Workload` names (fresh ones, never abe's),
connects (and creates the keys' topics or streams, where the broker has them) before it
starts the clock, as abe's side publishes to each key once before its own; builds
payloads with `bench_payload()` so both sides send the same bytes, calls
`progress(done)` as messages complete (`abe bench` cancels a workload whose progress
stalls), and builds its result with
`Measurement.from_latencies()`; for end_to_end, `Arrivals` does the timing and the
counting. `AbeWorkloads` below is abe's side and the reference.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from abe.backends.message_queue.base.bench_protocol import (
    MIN_PAYLOAD_BYTES,
    Measurement,
    Progress,
    RawBaseline,
    RawDrains,
    Workload,
    bench_payload,
    percentile,
)
from abe.backends.message_queue.consumer import AsyncLoopConsumer

if TYPE_CHECKING:
    from abe.backends.message_queue.base.interface import Backend

__all__ = [
    "MIN_PAYLOAD_BYTES",
    "WORKLOADS",
    "AbeWorkloads",
    "Arrivals",
    "DrainClock",
    "RAW_WORKLOADS",
    "RawDrains",
    "Measurement",
    "Progress",
    "RawBaseline",
    "Workload",
    "bench_payload",
    "percentile",
]

WORKLOADS: tuple[str, ...] = (
    "publish",
    "publish_many",
    "end_to_end",
    "drain",
    "drain_consumer",
    "drain_concurrent",
)
"""The workload names, in the order `abe bench` runs them; each is an `AbeWorkloads` method."""

RAW_WORKLOADS: Mapping[str, str] = {
    "publish": "publish",
    "publish_many": "publish_many",
    "end_to_end": "end_to_end",
    "drain": "drain_batched",
    "drain_consumer": "drain_ack_each",
    "drain_concurrent": "drain_batched",
}
"""The `RawBaseline` method each workload is compared with."""


class Arrivals:
    """The end_to_end workload's clock: each message's latency (counted once) and progress.

    The receiving side calls `record(payload)` for each `bench_payload` it gets, until
    `complete`; `measure(send, receive)` runs both and returns the `Measurement`.
    """

    def __init__(self, workload: Workload, progress: Progress) -> None:
        self.expected = workload.messages
        self.latencies: dict[int, float] = {}
        self.last = 0.0
        self._progress = progress

    @property
    def complete(self) -> bool:
        """Whether every message of the workload has arrived."""
        return len(self.latencies) >= self.expected

    def record(self, payload: Mapping[str, Any]) -> None:
        """`payload` arrived now; a redelivered one keeps its first latency."""
        now = time.perf_counter()
        self.latencies.setdefault(payload["seq"], now - payload["sent"])
        self.last = now
        self._progress(len(self.latencies))

    async def measure(
        self,
        send: Callable[[], Awaitable[None]],
        receive: Callable[[], Coroutine[Any, Any, None]],
    ) -> Measurement:
        """Start `receive()`, then the clock and `send()`; the result once both are done."""
        receiver = asyncio.get_running_loop().create_task(receive())
        started = time.perf_counter()
        try:
            await send()
            await receiver
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
        return Measurement.from_latencies(
            self.expected, self.last - started, list(self.latencies.values())
        )


class DrainClock:
    """A drain's clock: first and last message handled, and how many, counted once each.

    The handling side calls `record(payload)` for each backlog message it handles; the
    rate is (N - 1) / (last - first), so connecting and joining are left out.
    """

    def __init__(self, workload: Workload, progress: Progress) -> None:
        self.expected = workload.messages
        self.seen: set[int] = set()
        self.times: list[float] = []
        self._progress = progress
        self.done = asyncio.Event()

    @property
    def complete(self) -> bool:
        """Whether every backlog message has been handled."""
        return len(self.seen) >= self.expected

    def record(self, payload: Mapping[str, Any]) -> None:
        """The message `payload` was handled now (a redelivered one counts once)."""
        seq = payload["seq"]
        if seq in self.seen:
            return
        self.seen.add(seq)
        self.times.append(time.perf_counter())
        self._progress(len(self.seen))
        if len(self.seen) >= self.expected:
            self.done.set()

    async def run_until_complete(self, loops: Sequence[Coroutine[Any, Any, None]]) -> None:
        """Run reading loops (one per key, say) until every message is handled; a loop that
        fails first raises its error. The loops are cancelled either way."""
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        every: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.done.wait()), *tasks]
        try:
            await asyncio.wait(every, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()
        finally:
            for future in every:
                future.cancel()
            await asyncio.gather(*every, return_exceptions=True)

    def measurement(self) -> Measurement:
        """(N - 1) messages over the time from the first to the last; gaps as latencies."""
        times = self.times
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        seconds = times[-1] - times[0] if len(times) > 1 else 0.0
        return Measurement.from_latencies(max(len(times) - 1, 1), seconds, gaps)


class AbeWorkloads:
    """abe's side of the benchmark: every workload through a `BaseBackend`, round the keys."""

    name = "abe"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def _create_keys(self, workload: Workload) -> None:
        """One message to each key before the clock starts: a broker's topic or stream is made
        on first use, which a raw baseline does before its clock (as the workloads require)."""
        for key in workload.all_keys:
            await self.backend.publish(key, {"warmup": True})

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        """`workload.messages` awaited `publish()` calls; latency per call."""
        await self._create_keys(workload)
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for seq in range(workload.messages):
            payload = bench_payload(seq, workload.payload_bytes)
            before = clock()
            await self.backend.publish(workload.key_of(seq), payload)
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        """The messages through `publish_many()` in batches of `batch_size`; latency per batch."""
        await self._create_keys(workload)
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            batch = [bench_payload(seq, workload.payload_bytes) for seq in range(first, last)]
            before = clock()
            await self.backend.publish_many(workload.key_of(first // workload.batch_size), batch)
            latencies.append(clock() - before)
            progress(last)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        """A subscription that acks each message while one publisher sends them one at a time."""
        arrivals = Arrivals(workload, progress)

        async def receive() -> None:
            async for delivery in subscription:
                arrivals.record(delivery.payload)
                await delivery.ack()
                if arrivals.complete:
                    return
            raise RuntimeError(
                f"end_to_end: the subscription ended after {len(arrivals.latencies)} of "
                f"{workload.messages} messages"
            )

        async def send() -> None:
            for seq in range(workload.messages):
                payload = bench_payload(seq, workload.payload_bytes)
                await self.backend.publish(workload.key_of(seq), payload)
                await asyncio.sleep(0)  # let the subscriber run, as a network round trip would

        subscription = self.backend.subscribe(group=workload.group, keys=workload.all_keys)
        async with subscription:  # joined before the first publish
            return await arrivals.measure(send, receive)

    async def _fill(self, workload: Workload) -> None:
        for key, payloads in workload.backlog():
            await self.backend.publish_many(key, payloads)

    async def drain(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog drained by the `consume()` iterator (acknowledged on next)."""
        await self._fill(workload)
        clock = DrainClock(workload, progress)
        stream = self.backend.consume(group=workload.group, keys=workload.all_keys)
        try:
            async for payload in stream:
                clock.record(payload)
                if clock.complete:
                    break
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        return clock.measurement()

    async def drain_consumer(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog drained by `AsyncLoopConsumer` at its default settings."""
        return await self._drain_with_consumer(workload, progress, 1)

    async def drain_concurrent(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog drained by `AsyncLoopConsumer` with `workload.concurrency` handlers."""
        return await self._drain_with_consumer(workload, progress, workload.concurrency)

    async def _drain_with_consumer(
        self, workload: Workload, progress: Progress, concurrency: int
    ) -> Measurement:
        await self._fill(workload)
        clock = DrainClock(workload, progress)

        async def handle(payload: dict[str, Any]) -> None:
            clock.record(payload)

        consumer = AsyncLoopConsumer(
            self.backend, workload.group, keys=workload.all_keys, concurrency=concurrency
        )
        running = asyncio.get_running_loop().create_task(consumer.run(handle))
        waiting = asyncio.ensure_future(clock.done.wait())
        try:
            await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()  # the consumer failed: say why
                raise RuntimeError("the consumer stopped before the backlog was drained")
        finally:
            waiting.cancel()
            await consumer.shutdown()
            await asyncio.gather(running, return_exceptions=True)
        return clock.measurement()

    async def close(self) -> None:
        """Nothing to release: the backend belongs to the caller."""
