"""Helpers of the cluster tests: the providers' contract suites, and the failover sizes.

The contract suites subclass the single-broker ones (tests-integration/abe-mq-nats and
abe-mq-kafka), loaded here from their files under names of their own, so that only the
fixtures that point at a broker are replaced. conftest.py puts this folder, the crash
test's (abe_crash) and the providers' test folders on sys.path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

from abe_brokers import KafkaCluster, NatsCluster, RedisCluster
from abe_crash.records import Confirmed, Handled
from abe_crash.sizes import Sizes
from abe_crash.verdict import Verdict

__all__ = [
    "FAILOVER_SIZES",
    "Failover",
    "every_partition_resumed",
    "hold_down",
    "load_suite",
    "whole_cluster_crash",
]

Failover = Callable[..., Verdict]
"""The ``failover`` fixture: ``failover(target, name, key=None)`` runs the crash harness once
on ``key`` (a fresh one when None) and records its figures."""

_TESTS = Path(__file__).resolve().parent.parent

FAILOVER_SIZES = Sizes(messages=1500, publish_seconds=20.0, kill_every=1e9)
"""1,500 numbered messages over 20 s, three workers that are never killed: the only fault
is the node. ABE_CRASH_MESSAGES and the other ABE_CRASH_* sizes override these."""


def hold_down(sizes: Sizes) -> int:
    """Messages published after the kill that the other nodes must carry before the killed
    one comes back: an eighth of the run (187 of 1,500, about 2.5 s of the stream)."""
    return max(1, sizes.messages // 8)


def every_partition_resumed(run: Path) -> float | None:
    """Seconds from the kill until, on every Kafka partition, a message published after it
    was handled: the slowest partition, the dead broker's member's until the group moves it.

    From a crash run's files (events.log, confirmed.log, placed-kafka.log, handled-w*.log);
    None if no message was published after the kill.
    """
    events = dict(line.split()[:2] for line in _lines(run / "events.log"))
    killed = float(events["broker-killed"])
    confirmed = map(Confirmed.parse, _lines(run / "confirmed.log"))
    after = {c.number for c in confirmed if c.started >= killed}
    handled: dict[int, float] = {}
    for path in run.glob("handled-w*.log"):
        for h in map(Handled.parse, _lines(path)):
            handled[h.number] = min(handled.get(h.number, math.inf), h.at)
    resumed: dict[str, float] = {}
    for line in _lines(run / "placed-kafka.log"):
        number, _, partition, *_ = line.split()
        if partition != "-" and int(number) in after:
            at = handled.get(int(number), math.inf)
            resumed[partition] = min(resumed.get(partition, math.inf), at)
    return max(resumed.values()) - killed if resumed else None


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def load_suite(folder: str, name: str) -> ModuleType:
    """A provider's test_contract.py as module ``name`` (its class is not collected again)."""
    path = _TESTS / folder / "test_contract.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def whole_cluster_crash(
    cluster: RedisCluster | NatsCluster | KafkaCluster,
) -> Callable[[], Awaitable[None]]:
    """The contract suite's broker restart for a cluster: every node SIGKILLed, then all
    started again with their data (in a thread, so the test's event loop keeps running)."""

    async def restart() -> None:
        await asyncio.to_thread(cluster.kill)
        await asyncio.to_thread(cluster.start)

    return restart
