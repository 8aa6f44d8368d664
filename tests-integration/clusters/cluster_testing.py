"""Helpers of the cluster tests: the providers' contract suites, and the failover sizes.

The contract suites subclass the single-broker ones (tests-integration/abe-mq-nats and
abe-mq-kafka), loaded here from their files under names of their own, so that only the
fixtures that point at a broker are replaced. conftest.py puts this folder, the crash
test's (abe_crash) and the providers' test folders on sys.path.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

from abe_brokers import KafkaCluster, NatsCluster, RedisCluster
from abe_crash.sizes import Sizes
from abe_crash.verdict import Verdict

__all__ = ["FAILOVER_SIZES", "Failover", "hold_down", "load_suite", "whole_cluster_crash"]

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
