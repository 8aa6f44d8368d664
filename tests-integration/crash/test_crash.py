"""The crash test: workers SIGKILLed while messages flow, the broker killed and restarted
mid-publish, and then nothing confirmed may be missing, duplicates must stay within what
the crashes explain, and no worker may stall (see abe_crash/verdict.py for the rules)."""

from __future__ import annotations

from collections.abc import Callable

from abe_brokers import rerun_on_tansu_fault
from abe_crash.run import Target
from abe_crash.verdict import Verdict

Crash = Callable[[Target], Verdict]


def _passes(verdict: Verdict) -> None:
    assert verdict.ok, "\n".join([verdict.summary(), *verdict.problems])


def test_redis_loses_nothing_through_crashes(crash: Crash, redis_target: Target) -> None:
    _passes(crash(redis_target))


def test_nats_loses_nothing_through_crashes(crash: Crash, nats_target: Target) -> None:
    _passes(crash(nats_target))


@rerun_on_tansu_fault
def test_kafka_loses_nothing_through_crashes(crash: Crash, kafka_target: Target) -> None:
    _passes(crash(kafka_target))


def test_sqs_loses_nothing_through_worker_crashes(crash: Crash, sqs_target: Target) -> None:
    _passes(crash(sqs_target))
