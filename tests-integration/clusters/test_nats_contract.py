"""The whole contract suite against a three-node NATS JetStream cluster.

Streams get three replicas (ABE_NATS_REPLICAS=3) and NATS_URL lists every node; the
broker restart of the suite crashes the whole cluster. The failover run is in
test_failover.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from abe_brokers import NatsCluster
from abe_mq_nats_testing import Janitor, raw_client, settings_for
from cluster_testing import load_suite, whole_cluster_crash

from abe.testing import BackendFactory, RawWriter, RestartableBroker, TlsMismatch
from abe_mq_nats import NatsBackend
from abe_mq_nats._client import stream_name

_suite = load_suite("abe-mq-nats", "abe_cluster_nats_contract")


_OPERATION_TIMEOUT = 15.0
"""Creating an R3 stream or consumer needs the three nodes to agree and a leader elected,
with three clusters sharing two cores in CI. (The JetStream calls that once took longer
than 15 s were creates left unanswered, nats-io/nats-server#3677: see test_nats_streams.py.)"""


def _settings(cluster: NatsCluster, **overrides: Any) -> Any:
    overrides.setdefault("operation_timeout", _OPERATION_TIMEOUT)
    return settings_for(cluster.url, replicas=cluster.size, **overrides)


@pytest_asyncio.fixture
async def cluster_janitor(nats_cluster: NatsCluster) -> AsyncIterator[Janitor]:
    """Deletes, after the test, every stream its backends and raw writers created."""
    janitor = Janitor(nats_cluster.nodes[0].url)  # streams have replicas: any node deletes
    try:
        yield janitor
    finally:
        for backend in janitor.backends:
            await backend.close()
        await janitor.clean()


class TestNatsClusterContract(_suite.TestNatsContract):  # type: ignore[misc,name-defined]
    @pytest.fixture
    def backend_factory(
        self, nats_cluster: NatsCluster, cluster_janitor: Janitor
    ) -> BackendFactory:
        def make(*, prefetch: int | None = None) -> NatsBackend:
            overrides = {} if prefetch is None else {"prefetch": prefetch}
            return cluster_janitor.track(NatsBackend(_settings(nats_cluster, **overrides)))

        return make

    @pytest.fixture
    def write_raw(self, nats_cluster: NatsCluster, cluster_janitor: Janitor) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            async with raw_client(nats_cluster.nodes[1].url) as (_, js):  # another node
                try:
                    await js.find_stream_name_by_subject(key)
                except Exception:
                    name = f"raw-{stream_name(key)}"
                    await js.add_stream(name=name, subjects=[key], num_replicas=nats_cluster.size)
                    cluster_janitor.streams.add(name)
                await js.publish(key, body)

        return write

    @pytest.fixture
    def restartable_broker(self, nats_cluster: NatsCluster) -> RestartableBroker:
        """The whole cluster crashes (every node SIGKILLed) and comes back with its stores."""

        def make(*, prefetch: int | None = None) -> NatsBackend:
            overrides: dict[str, Any] = {"operation_timeout": 3.0}
            if prefetch is not None:
                overrides["prefetch"] = prefetch
            return NatsBackend(_settings(nats_cluster, **overrides))

        return RestartableBroker(make, whole_cluster_crash(nats_cluster))

    @pytest.fixture
    def tls_mismatch(self, nats_cluster: NatsCluster, cluster_janitor: Janitor) -> TlsMismatch:
        node = nats_cluster.nodes[0]

        def backend_at(host: str, port: int) -> NatsBackend:
            url = f"tls://{_suite.WRONG_TOKEN}@{host}:{port}"
            return cluster_janitor.track(NatsBackend(settings_for(url, operation_timeout=3.0)))

        return TlsMismatch(backend_at, (node.host, node.port), _suite.WRONG_TOKEN)
