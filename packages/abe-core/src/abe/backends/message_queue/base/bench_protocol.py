"""What a raw-client benchmark baseline implements: the workload, the measurement, the protocol.

A provider's `raw_baseline()` returns a `RawBaseline` (see `abe.benchmarking`, which
re-exports all of this with abe's own side of the workloads). These types live beside the
base class, which names `RawBaseline`, so that the two never import each other in a cycle.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "MIN_PAYLOAD_BYTES",
    "Measurement",
    "Progress",
    "RawBaseline",
    "RawDrains",
    "Workload",
    "bench_payload",
    "percentile",
]

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
    """A fresh consumer group for this run alone (end_to_end and the drains)."""
    keys: tuple[str, ...] = ()
    """Fresh keys to spread the messages over; none given means `key` alone."""
    concurrency: int = 16
    """Handlers of `AsyncLoopConsumer` in drain_concurrent."""

    @property
    def all_keys(self) -> tuple[str, ...]:
        """The keys this run publishes to and reads (`key` alone by default)."""
        return self.keys or (self.key,)

    def key_of(self, seq: int) -> str:
        """The key message `seq` goes to: round the keys."""
        keys = self.all_keys
        return keys[seq % len(keys)]

    def backlog(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """The drain's backlog: (key, payloads) batches of `batch_size`, round the keys."""
        for first in range(0, self.messages, self.batch_size):
            last = min(first + self.batch_size, self.messages)
            yield (
                self.key_of(first // self.batch_size),
                [bench_payload(seq, self.payload_bytes) for seq in range(first, last)],
            )


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


class RawDrains(Protocol):
    """The drains written with a broker's client library (optional on a `RawBaseline`).

    Each publishes `workload.backlog()` to `workload.all_keys` itself, starts no clock
    until then, drains it in `workload.group` with acks and returns
    `DrainClock.measurement()`.
    """

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The plainest loop: read in batches, one awaited acknowledgement per message."""
        ...

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The best hand-written loop: read in batches, acknowledge each batch at once."""
        ...
