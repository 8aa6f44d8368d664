"""Failover without loss: one node of each cluster killed and restarted while messages flow.

Each run is the crash test's (tests-integration/crash/abe_crash): a producer publishing
numbered messages, each confirmed, and three worker processes running AsyncLoopConsumer
throughout; no worker is killed, one node is (SIGKILL), kept down until an eighth of the
messages published after the kill were handled by the other nodes, then started again.
Nothing confirmed may be lost; duplicates must stay within what the restart explains.

- NATS: three nodes, R3 streams; the node killed is the one serving the most abe clients
  (its monitoring port says), which reconnect to the others from NATS_URL.
- Redis: six nodes, three masters with a replica each, ABE_REDIS_WAIT_REPLICAS=1 (a
  publish is confirmed once a replica has it); the node killed is the master serving the
  run's stream. Its replica takes the slots over, but alone it cannot confirm a publish
  (WAIT 1 has no replica to wait for) until the killed node rejoins as its replica: so
  the node is started as soon as the replica was promoted, not held down (held longer,
  publishes on its slots are refused for as long).
- Kafka: three Tansu brokers on one bucket, replication factor 3, acks=all. A Tansu
  broker names only itself in metadata (node 111, leader of every partition, coordinator
  of every group), aiokafka keeps to the brokers metadata names and never goes back to its
  bootstrap list, and it starts from a random broker of that list (collect_hosts shuffles
  it): a client given every broker sits on one chosen by chance, and when that is the one
  killed it waits for it. So each client is given one broker: the producer broker 0,
  worker n broker n % 3; broker 1, worker 1's, is killed. (Given every broker, as this
  test once was, the killed broker was at times every worker's: nothing was handled until
  it came back, which is the chance placement, not the group.) The other brokers keep
  serving: group state and offsets are in the bucket, so each live broker answers as the
  coordinator, drops the unreachable member once its session timeout (2 s) ends, and
  completes the rebalance without waiting the rebalance timeout for it; worker 1's
  partitions are then read by workers 2 and 3 (kafka_failover_probe.py shows the same with
  raw aiokafka). The broker is held down until three eighths of the run's messages,
  published after the kill, were handled (at most 15 s), so that the move must happen
  while it is down; the test asserts a message published after the kill was handled on
  every partition within the session timeout plus one redelivery timeout (what the others
  take to settle their in-flight messages before rejoining) plus 5 s for the join on a
  loaded machine: 12 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from abe_brokers import KafkaCluster, NatsCluster, RedisCluster, rerun_on_tansu_fault, unique_name
from abe_crash.run import Target
from abe_crash.sizes import Sizes
from cluster_testing import Failover, every_partition_resumed, hold_down
from kafka_testing import SESSION_TIMEOUT, TEST_ENV


class _BusiestNode:
    """The crash a failover run does: kill the node most abe clients use, then start it."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self.index: int | None = None
        self.clients: list[int] = []

    def kill(self) -> None:
        self.clients = self.cluster.client_counts()
        self.index = self.cluster.busiest_node()
        self.cluster.kill_node(self.index)

    def start(self) -> None:
        assert self.index is not None
        self.cluster.start_node(self.index)


def test_nats_cluster_loses_nothing_when_a_node_dies(
    nats_cluster: NatsCluster,
    failover: Failover,
    failover_sizes: Sizes,
    record_property: Callable[[str, object], None],
) -> None:
    crash = _BusiestNode(nats_cluster)
    target = Target(
        "nats",
        nats_cluster.env(),
        crash,
        nats_cluster.describe(),
        hold_down=hold_down(failover_sizes),
    )
    verdict = failover(target, "nats-cluster")
    record_property("abe_clients_per_node_at_kill", str(crash.clients))
    assert crash.index is not None
    assert crash.clients[crash.index] > 0, f"the node killed served no abe client: {crash.clients}"
    assert verdict.ok, "\n".join([verdict.summary(), *verdict.problems])
    assert verdict.figures["lost"] == 0


_REBALANCE_SLACK = 5.0
"""Seconds for the rebalance after the session expired: the members' JoinGroup and SyncGroup
on Tansu (about half a session timeout) and a loaded machine's scheduling."""


class _OneWorkersBroker:
    """The crash a failover run does: kill the broker worker 1 bootstraps from, then start it."""

    def __init__(self, cluster: KafkaCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index

    def kill(self) -> None:
        self.cluster.kill_node(self.index)

    def start(self) -> None:
        self.cluster.start_node(self.index)


@rerun_on_tansu_fault
def test_kafka_cluster_loses_nothing_when_a_broker_dies(
    kafka_cluster: KafkaCluster,
    failover: Failover,
    failover_sizes: Sizes,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    size = kafka_cluster.size
    # each client is given one broker (aiokafka picks one of a list at random): the producer
    # broker 0, worker n broker n % size; broker 1, worker 1's, is killed
    env = {**kafka_cluster.env(at=0), **TEST_ENV}

    def worker_env(number: int) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": kafka_cluster.bootstrap_at(number)}

    target = Target(
        "kafka",
        env,
        _OneWorkersBroker(kafka_cluster, 1),
        f"{kafka_cluster.describe()}, acks=all, replication factor {size}",
        hold_down=3 * hold_down(failover_sizes),  # a third of the partitions wait for the move
        worker_env=worker_env,
    )
    verdict = failover(target, "kafka-cluster")
    assert verdict.ok, "\n".join([verdict.summary(), *verdict.problems])
    assert verdict.figures["lost"] == 0
    moved = every_partition_resumed(tmp_path / "run")
    record_property("every_partition_resumed_s", moved)
    bound = SESSION_TIMEOUT + failover_sizes.redelivery_timeout + _REBALANCE_SLACK
    down = verdict.figures["broker_down_s"]
    assert moved is not None, "no message was published after the broker was killed"
    assert moved < min(bound, float(down)), (
        f"a partition was read again only {moved:.1f}s after the kill (broker down {down}s): "
        f"the group should have moved the dead broker's worker's partitions within {bound:.0f}s"
    )


class _KeysMaster:
    """The crash a failover run does: kill the master serving `key`'s slot, then start it
    again once its replica took over. The master is found before the run, so the kill is
    one SIGKILL at the time the harness notes (nothing fails over before it)."""

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self.cluster = cluster
        self.index = cluster.master_of(key)
        self.key = key
        self.killed_at = 0.0
        self.promoted: int | None = None
        self.promoted_after = 0.0
        self.role_after = ""

    def kill(self) -> None:
        self.cluster.kill_node(self.index)
        self.killed_at = time.monotonic()

    def start(self) -> None:
        self.promoted = self.cluster.wait_master_of(self.key, not_on=self.index)
        self.promoted_after = time.monotonic() - self.killed_at
        self.cluster.start_node(self.index)
        self.role_after = self.cluster.role(self.index)


def test_redis_cluster_loses_nothing_when_a_master_dies(
    redis_cluster: RedisCluster,
    failover: Failover,
    record_property: Callable[[str, object], None],
) -> None:
    key = unique_name("failover")
    crash = _KeysMaster(redis_cluster, key)
    target = Target(
        "redis",
        redis_cluster.env(),
        crash,
        redis_cluster.describe(),
        hold_down=0,  # started once its replica took over (see above)
    )
    verdict = failover(target, "redis-cluster", key)
    record_property("redis_master_killed", str(crash.index))
    record_property("redis_replica_promoted", str(crash.promoted))
    record_property("redis_promoted_after_s", round(crash.promoted_after, 2))
    assert verdict.ok, "\n".join([verdict.summary(), *verdict.problems])
    assert verdict.figures["lost"] == 0
    assert crash.promoted is not None, "the master of the stream's slot was never killed"
    assert crash.role_after == "slave", f"the old master came back as {crash.role_after!r}"
