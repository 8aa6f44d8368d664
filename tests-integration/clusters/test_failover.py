"""Failover without loss: one node of each cluster killed and restarted while messages flow.

Each run is the crash test's (tests-integration/crash/abe_crash): a producer publishing
numbered messages, each confirmed, and three worker processes running AsyncLoopConsumer
throughout; no worker is killed, one node is (SIGKILL), kept down until an eighth of the
messages published after the kill were handled by the other nodes, then started again.
Nothing confirmed may be lost; duplicates must stay within what the restart explains.

- NATS: three nodes, R3 streams; the node killed is the one serving the most abe clients
  (its monitoring port says), which reconnect to the others from NATS_URL.
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

from collections.abc import Callable
from pathlib import Path

from abe_brokers import KafkaCluster, NatsCluster, rerun_on_tansu_fault
from abe_crash.run import Target
from abe_crash.sizes import Sizes
from abe_crash.verdict import Verdict
from cluster_testing import every_partition_resumed, hold_down
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
    failover: Callable[[Target, str], Verdict],
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
    failover: Callable[[Target, str], Verdict],
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
