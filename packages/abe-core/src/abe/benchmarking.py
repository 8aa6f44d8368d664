"""The three benchmark workloads of `abe bench`, as abe runs them and as a raw client must.

    publish       `messages` awaited `publish()` calls, one after another; latency per call.
    publish_many  the same number of messages in batches of `batch_size`; latency per batch.
    end_to_end    a subscriber (receive, then ack) runs while a publisher sends `messages`
                  one at a time; latency per message = receive time - publish time, taken
                  from the `time.perf_counter()` the publisher put in the payload.

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
connects before it starts the clock, builds payloads with `bench_payload()` so both
sides send the same bytes, calls `progress(done)` as messages complete (`abe bench`
cancels a workload whose progress stalls), and builds its result with
`Measurement.from_latencies()`; for end_to_end, `Arrivals` does the timing and the
counting. `AbeWorkloads` below is abe's side and the reference.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from abe.backends.message_queue.base.interface import Backend

__all__ = [
    "MIN_PAYLOAD_BYTES",
    "WORKLOADS",
    "AbeWorkloads",
    "Arrivals",
    "Measurement",
    "Progress",
    "RawBaseline",
    "Workload",
    "bench_payload",
    "percentile",
]

WORKLOADS: tuple[str, ...] = ("publish", "publish_many", "end_to_end")
"""The workload names, in the order `abe bench` runs them; each is a `RawBaseline` method."""

Progress = Callable[[int], None]
"""Called with the number of messages a workload has completed so far."""


@dataclass(frozen=True)
class Workload:
    """What one workload run is asked to do; the same for abe's side and a raw baseline."""

    messages: int
    """How many messages to publish (and, for end_to_end, to receive)."""
    payload_bytes: int
    """About how large each JSON body is (at least the ~50 bytes of the fields it needs)."""
    batch_size: int
    """Messages per `publish_many` call."""
    key: str
    """A fresh key for this run alone."""
    group: str
    """A fresh consumer group for this run alone (end_to_end)."""


@dataclass(frozen=True)
class Measurement:
    """The result of one workload: how many messages, how long, and the latency percentiles."""

    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def msgs_per_s(self) -> float:
        """Throughput over the whole run."""
        return self.messages / max(self.seconds, 1e-9)

    @classmethod
    def from_latencies(
        cls, messages: int, seconds: float, latencies: Sequence[float]
    ) -> Measurement:
        """A measurement from the run's duration and its latencies, both in seconds."""
        ordered = sorted(latencies)
        return cls(
            messages=messages,
            seconds=seconds,
            p50_ms=percentile(ordered, 50) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
        )

    def as_dict(self) -> dict[str, float]:
        """messages, seconds, msgs_per_s, p50_ms, p99_ms: the keys `abe bench --json` documents."""
        return {
            "messages": self.messages,
            "seconds": self.seconds,
            "msgs_per_s": self.msgs_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank `q`th percentile of values sorted ascending; 0.0 when there are none."""
    if not ordered:
        return 0.0
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


_FIELDS_TEMPLATE = {"seq": 10**9, "sent": 123456.123456789, "pad": ""}


MIN_PAYLOAD_BYTES = len(json.dumps(_FIELDS_TEMPLATE, separators=(",", ":")))
"""The smallest benchmark body: its number, its send time and an empty padding."""


@functools.lru_cache(maxsize=16)
def _padding(payload_bytes: int) -> str:
    overhead = len(json.dumps(_FIELDS_TEMPLATE, separators=(",", ":")))
    return "x" * max(0, payload_bytes - overhead)


def bench_payload(seq: int, payload_bytes: int) -> dict[str, Any]:
    """The payload of message `seq`: its number, `perf_counter()` now, padding to the size."""
    return {"seq": seq, "sent": time.perf_counter(), "pad": _padding(payload_bytes)}


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


class RawBaseline(Protocol):
    """The three workloads written directly with a broker's client library.

    Returned by a provider's `BaseBackend.raw_baseline()`; `abe bench` runs each method
    beside abe's own and reports the ratio. See the module docstring for the rules.
    """

    @property
    def name(self) -> str:
        """The client library and its version, e.g. "redis-py 5.2.1"."""
        ...

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        """`workload.messages` awaited single publishes; latency per call."""
        ...

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        """The messages in batches of `workload.batch_size`; latency per batch."""
        ...

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        """A subscriber that acks while one publisher sends; latency per message."""
        ...

    async def close(self) -> None:
        """Release the client's connections."""
        ...


class AbeWorkloads:
    """abe's side of the benchmark: the three workloads through a `BaseBackend`."""

    name = "abe"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        """`workload.messages` awaited `publish()` calls; latency per call."""
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for seq in range(workload.messages):
            payload = bench_payload(seq, workload.payload_bytes)
            before = clock()
            await self.backend.publish(workload.key, payload)
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        """The messages through `publish_many()` in batches of `batch_size`; latency per batch."""
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            batch = [bench_payload(seq, workload.payload_bytes) for seq in range(first, last)]
            before = clock()
            await self.backend.publish_many(workload.key, batch)
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
                await self.backend.publish(workload.key, bench_payload(seq, workload.payload_bytes))
                await asyncio.sleep(0)  # let the subscriber run, as a network round trip would

        subscription = self.backend.subscribe(group=workload.group, keys=[workload.key])
        async with subscription:  # joined before the first publish
            return await arrivals.measure(send, receive)

    async def close(self) -> None:
        """Nothing to release: the backend belongs to the caller."""
