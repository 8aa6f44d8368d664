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
test that fails after two confirmed batches overlapped fails with ``TansuFault``,
its own error chained to it, and runs again; one that fails without such an overlap
fails as it is.

A third sign is the group coordinator forgetting live members. On the three brokers
sharing one bucket, a member leaving the group (abe's receiver leaves when nobody reads)
was followed at once by UnknownMemberId answers to the other members' heartbeats and
commits, though they had heartbeated a moment before; each then rejoined under a new id,
and the group rebalanced for the rest of the test (40 generations in 65 s) while no
member kept its partitions long enough to read them. A Kafka broker answers a member it
knows with RebalanceInProgress; it forgets one only after its session timeout without a
heartbeat. So while a marked test runs, aiokafka's group coordinator log is watched for
those answers.

The same holds for a partition Tansu cannot serve to its end: its log end offset says
records are there, and fetches at a position before it answer empty however long one
waits (the cluster's contract suite: a member "holds 1 partition(s) with 1 message(s)
waiting but has received none for 30s"). A Kafka broker serves every offset below its
high watermark. When a marked test fails, each partition its producers wrote to is read
from its start by a plain aiokafka consumer; one that makes no progress for
``_PATIENCE`` seconds before its end is named, and the test runs again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "TANSU_FAULT_SIGNS",
    "TansuFault",
    "unreadable_partitions",
    "confirmed_overlaps",
    "forgotten_members",
    "pytest_runtest_call",
    "rerun_on_tansu_fault",
    "watch_confirmations",
    "watch_members",
]

TANSU_FAULT_SIGNS = [
    "for two different messages",  # one offset confirmed for two messages (crash verdict, here)
    "UnknownError",  # the losing produce request, as aiokafka reports Tansu's AlreadyExists
    "cannot be read past offset",  # a partition Tansu does not serve to its end
    "as from an unknown member",  # the coordinator forgot live members (UnknownMemberId)
]
_PATIENCE = 5.0  # seconds without progress before a partition counts as unreadable
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class TansuFault(AssertionError):
    """A test failed after the broker confirmed one offset for two produce requests, with a
    partition it does not serve to its end, or after it forgot live members of a group."""


_confirmed: dict[tuple[str, int], list[tuple[int, int]]] = {}
_overlaps: list[str] = []
_forgotten: list[str] = []
_UNKNOWN_MEMBER = ("member_id was not recognized", "UnknownMemberIdError")
_COORDINATOR_LOG = "aiokafka.consumer.group_coordinator"


class _ForgottenMembers(logging.Handler):
    """Notes each answer of the group coordinator that took a member of this process for
    an unknown one (aiokafka logs them, some at DEBUG only)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(mark in text for mark in _UNKNOWN_MEMBER):
            _forgotten.append(text.splitlines()[0][:200])


def watch_members() -> Callable[[], None]:
    """From now on note the coordinator's UnknownMemberId answers; the call that stops it."""
    _forgotten.clear()
    logger, handler = logging.getLogger(_COORDINATOR_LOG), _ForgottenMembers(logging.DEBUG)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # pytest's own handlers keep their levels
    logger.addHandler(handler)

    def stop() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return stop


def forgotten_members() -> list[str]:
    """The sign, if the coordinator answered members of this process as unknown ones."""
    if not _forgotten:
        return []
    return [
        f"Tansu's group coordinator answered {len(_forgotten)} request(s) of this process's "
        f"members as from an unknown member, e.g. {_forgotten[0]!r}"
    ]


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


async def unreadable_partitions(
    bootstrap: str, partitions: Iterable[tuple[str, int]], patience: float = _PATIENCE
) -> list[str]:
    """Each of `partitions` that a plain consumer, reading from its start, cannot read to its
    log end offset: no record for `patience` seconds while its position is short of the end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    found: list[str] = []
    try:
        tps = [TopicPartition(topic, partition) for topic, partition in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            await consumer.seek_to_beginning(tp)
            progress = time.monotonic()
            while (position := await consumer.position(tp)) < ends[tp]:
                if (await consumer.getmany(tp, timeout_ms=500)).get(tp):
                    progress = time.monotonic()
                elif time.monotonic() - progress > patience:
                    found.append(
                        f"{tp.topic}[{tp.partition}] cannot be read past offset {position} "
                        f"though its log ends at {ends[tp]} (nothing for {patience:g}s)"
                    )
                    break
    finally:
        await consumer.stop()
    return found


def _broker_of(item: pytest.Item) -> Any:
    """The Kafka broker or cluster fixture the test uses, if any."""
    names = [name for name in ("kafka_cluster", "kafka_broker") if name in item.funcargs]
    return item.funcargs[names[0]] if names else None


def _log_ends(broker: Any) -> dict[Path, int]:
    """How long each Tansu log of `broker` is now (a cluster's nodes, or the broker itself)."""
    paths = [getattr(node, "log_path", None) for node in getattr(broker, "nodes", [broker])]
    return {path: path.stat().st_size for path in paths if path is not None and path.exists()}


def _errors_since(ends: dict[Path, int], most: int = 20) -> list[str]:
    """Tansu's ERROR lines written since `ends` (at most `most`), without colour codes."""
    lines: list[str] = []
    for path, end in ends.items():
        with path.open("rb") as log:
            log.seek(end)
            text = log.read().decode("utf-8", "replace")
        for line in text.splitlines():
            if "ERROR" in line:
                lines.append(f"{path.parent.name}: {_COLOUR.sub('', line)[:400]}")
    return lines[:most]


def _diagnose(broker: Any) -> list[str]:
    """The signs of Tansu's faults since the test began (see the module's docstring)."""
    signs = [*_overlaps, *forgotten_members()]
    if broker is not None and _confirmed:
        try:
            signs += asyncio.run(unreadable_partitions(broker.bootstrap, sorted(_confirmed)))
        except Exception as exc:  # only a diagnosis: the test's own failure stands
            signs.append(f"(reading the partitions back failed: {type(exc).__name__}: {exc})")
    return signs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """In a test marked ``rerun_on_tansu_fault``, name the fault when the failure follows it."""
    marker = item.get_closest_marker("flaky")
    if marker is None or marker.kwargs.get("only_rerun") is not TANSU_FAULT_SIGNS:
        return (yield)
    watch_confirmations()
    stop_watching = watch_members()
    broker = _broker_of(item)
    ends = _log_ends(broker) if broker is not None else {}
    try:
        return (yield)
    except Exception as exc:
        signs = _diagnose(broker)
        if any(sign in text for text in signs for sign in TANSU_FAULT_SIGNS):
            raise TansuFault("; ".join(signs)) from exc
        errors = _errors_since(ends)
        if sys.version_info >= (3, 11):  # what was looked at, for whoever reads the failure
            exc.add_note("\n".join(signs or ["no sign of Tansu's known faults"]))
            if errors:
                exc.add_note("\n".join(["Tansu's errors meanwhile:", *errors]))
        raise
    finally:
        stop_watching()


rerun_on_tansu_fault = pytest.mark.flaky(reruns=2, only_rerun=TANSU_FAULT_SIGNS)
"""Mark a test on Tansu over moto's S3 to run again (twice at most) on that fault alone."""
