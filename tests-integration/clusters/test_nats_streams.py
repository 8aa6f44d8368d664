"""Stream creation on a three-node NATS cluster when several clients make the same stream.

nats-server 2.9 may leave one of several simultaneous creates of a stream unanswered
(nats-io/nats-server#3677), or answer one before the stream has a leader: abe's first
publishes from several processes to a new key must still all land, within the operation
timeout.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from abe_brokers import NatsCluster
from abe_mq_nats_testing import Janitor, settings_for

from abe.testing import unique
from abe.testing.helpers import receive
from abe_mq_nats import NatsBackend

_CLIENTS, _ROUNDS, _OPERATION_TIMEOUT = 6, 5, 5.0


@pytest.mark.asyncio
async def test_simultaneous_first_publishes_from_many_clients_all_land(
    nats_cluster: NatsCluster,
) -> None:
    janitor = Janitor(nats_cluster.nodes[0].url)
    backends = [
        janitor.track(
            NatsBackend(
                settings_for(
                    nats_cluster.nodes[index % nats_cluster.size].url,
                    replicas=nats_cluster.size,
                    operation_timeout=_OPERATION_TIMEOUT,
                )
            )
        )
        for index in range(_CLIENTS)
    ]
    slowest = 0.0
    try:
        for backend in backends:  # connected first: only the stream creates race
            await backend.publish(unique("warm-up"), {"n": 0})
        for _ in range(_ROUNDS):
            key = unique("together")

            async def first_publish(backend: NatsBackend, key: str = key) -> float:
                started = time.monotonic()
                await backend.publish(key, {"from": id(backend)})
                return time.monotonic() - started

            slowest = max(slowest, *await asyncio.gather(*map(first_publish, backends)))
            async with backends[0].subscribe(group=unique("count"), keys=[key]) as subscription:
                await receive(subscription, _CLIENTS)
    finally:
        for backend in janitor.backends:
            await backend.close()
        await janitor.clean()
    assert slowest < _OPERATION_TIMEOUT
