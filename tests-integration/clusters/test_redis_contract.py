"""The whole contract suite against a Redis Cluster: three masters with a replica each.

Backends read the cluster's own variables (``RedisCluster.env()``: a node's REDIS_URL and
ABE_REDIS_WAIT_REPLICAS=1, a publish confirmed once a replica has it), so they take the
road a user's ``from_env()`` takes; keys fall in every slot, on all three masters. The
broker restart of the suite crashes the whole cluster (every node SIGKILLed) and starts
it again from its files. Keys are not deleted one by one: the cluster is the session's
own, and its files go with it. The failover run is in test_failover.py.
"""

from __future__ import annotations

import pytest
from abe_brokers import RedisCluster, free_port
from cluster_testing import load_suite, whole_cluster_crash
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

from abe.backends.message_queue.base import BaseBackend
from abe.testing import BackendFactory, RawWriter, RestartableBroker, TlsMismatch
from abe_mq_redis import RedisBackend, RedisSettings

_suite = load_suite("abe-mq-redis", "abe_cluster_redis_contract")


def _factory(cluster: RedisCluster, **variables: str) -> BackendFactory:
    """Backends built from the cluster's environment (short redelivery timeout), as users do."""

    def make(*, prefetch: int | None = None) -> BaseBackend:
        env = {**cluster.env(), "ABE_MQ_REDELIVERY_TIMEOUT": "2", "ABE_MQ_OPERATION_TIMEOUT": "5"}
        env |= variables
        if prefetch is not None:
            env["ABE_MQ_PREFETCH"] = str(prefetch)
        return RedisBackend(RedisSettings.from_env(env))

    return make


class TestRedisClusterContract(_suite.TestRedisContract):  # type: ignore[misc,name-defined]
    @pytest.fixture
    def backend_factory(self, redis_cluster: RedisCluster) -> BackendFactory:
        return _factory(redis_cluster)

    @pytest.fixture
    def write_raw(self, redis_cluster: RedisCluster) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            # redis-py's own cluster client, started from the last node (abe's use the first)
            seeds = reversed(redis_cluster.startup_nodes)
            nodes = [ClusterNode(host, port) for host, port in seeds]
            client = ClusterClient(startup_nodes=nodes)
            try:
                await client.xadd(key, {"data": body})
            finally:
                await client.aclose()

        return write

    @pytest.fixture
    def restartable_broker(self, redis_cluster: RedisCluster) -> RestartableBroker:
        """The whole cluster crashes (every node SIGKILLed) and comes back from its AOFs."""

        factory = _factory(redis_cluster, ABE_MQ_OPERATION_TIMEOUT="2")
        return RestartableBroker(factory, whole_cluster_crash(redis_cluster))

    @pytest.fixture
    def unreachable_backend_factory(self, redis_cluster: RedisCluster) -> BackendFactory:
        port = free_port()  # nothing listens there
        return _factory(redis_cluster, REDIS_URL=f"redis://127.0.0.1:{port}/0")

    @pytest.fixture
    def tls_mismatch(self, redis_cluster: RedisCluster) -> TlsMismatch:
        secret = "Tls-0nly-Pa55word"
        node = redis_cluster.nodes[0]

        def backend_at(host: str, port: int) -> BaseBackend:
            env = {
                **redis_cluster.env(),
                "REDIS_URL": f"rediss://:{secret}@{host}:{port}/0",
                "ABE_MQ_OPERATION_TIMEOUT": "3",
            }
            return RedisBackend(RedisSettings.from_env(env))

        return TlsMismatch(backend_at, (node.host, node.port), secret)
