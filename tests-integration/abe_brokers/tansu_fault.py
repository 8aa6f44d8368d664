"""The one fault of the emulated Kafka that a test may run again for, named by its signs.

Tansu 0.6 over moto's S3 sometimes confirms two produce requests to one partition at the
same offset, when they come together (its first writes, dead letters and copies from
several processes, or three brokers on one bucket): a record stored in the overlapping
batch is then never read by anyone, and the request that lost the race fails with
Kafka's UnknownError. moto with atomic PutObject (atomic_moto.py) made it rarer, not
gone; docs/faults.md has the evidence. abe cannot tell it from a lost message, and a
Kafka broker never does it, so a Kafka-on-Tansu test runs again, at most twice, when
its failure shows one of these signs, and fails like any other test otherwise.

"received N of M messages" is not a sign by itself: it can hide an abe bug (as a poison
body given back on stop, fixed in abe-core). But a test that waits in vain for a message
whose offset Tansu also confirmed for another produce request met the fault: the record
stored second is skipped by every reader. So every produce request this process makes is
watched (aiokafka resolves each confirmed batch in ``MessageBatch.done``), and a marked
test that fails after two confirmed batches overlapped fails with ``TansuOffsetRace``,
its own error chained to it, and runs again; one that fails without such an overlap
fails as it is.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

__all__ = [
    "TANSU_FAULT_SIGNS",
    "TansuOffsetRace",
    "confirmed_overlaps",
    "pytest_runtest_call",
    "rerun_on_tansu_fault",
    "watch_confirmations",
]

TANSU_FAULT_SIGNS = [
    "for two different messages",  # one offset confirmed for two messages (crash verdict, here)
    "UnknownError",  # the losing produce request, as aiokafka reports Tansu's AlreadyExists
]


class TansuOffsetRace(AssertionError):
    """A test failed after the broker confirmed one offset for two produce requests."""


_confirmed: dict[tuple[str, int], list[tuple[int, int]]] = {}
_overlaps: list[str] = []


def confirmed_overlaps() -> list[str]:
    """Each offset this process's producers had confirmed twice since the last test began."""
    return list(_overlaps)


def watch_confirmations() -> None:
    """From now on note the offsets of each batch confirmed to this process (forgetting
    earlier ones): aiokafka's ``MessageBatch.done`` is wrapped once."""
    _confirmed.clear()
    _overlaps.clear()
    from aiokafka.producer.message_accumulator import MessageBatch  # type: ignore[import-untyped]

    done = MessageBatch.done
    if getattr(done, "watched", False):
        return

    def noting_done(batch: Any, base_offset: int, *args: Any, **kwargs: Any) -> Any:
        if base_offset >= 0:
            tp, count = batch.tp, max(1, batch.record_count)
            ranges = _confirmed.setdefault((tp.topic, tp.partition), [])
            for start, end in ranges:
                if start < base_offset + count and base_offset < end:
                    _overlaps.append(
                        f"Tansu confirmed offsets {base_offset}..{base_offset + count - 1} of "
                        f"{tp.topic}[{tp.partition}] after {start}..{end - 1}: an offset "
                        f"for two different messages"
                    )
            ranges.append((base_offset, base_offset + count))
        return done(batch, base_offset, *args, **kwargs)

    noting_done.watched = True  # type: ignore[attr-defined]
    MessageBatch.done = noting_done


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """In a test marked ``rerun_on_tansu_fault``, name the fault when the failure follows it."""
    marker = item.get_closest_marker("flaky")
    if marker is None or marker.kwargs.get("only_rerun") is not TANSU_FAULT_SIGNS:
        return (yield)
    watch_confirmations()
    try:
        return (yield)
    except Exception as exc:
        if _overlaps:
            raise TansuOffsetRace("; ".join(_overlaps)) from exc
        raise


rerun_on_tansu_fault = pytest.mark.flaky(reruns=2, only_rerun=TANSU_FAULT_SIGNS)
"""Mark a test on Tansu over moto's S3 to run again (twice at most) on that fault alone."""
