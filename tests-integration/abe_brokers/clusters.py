"""Clusters owned by the tests: three nats-servers with JetStream, Tansu brokers on one bucket.

Each cluster lives on free loopback ports in its own directory, is started whole by
``start()``, and can lose one node (``kill_node``: SIGKILL, as a crash) and get it back
(``start_node``: same port, same data) while clients keep running. ``env()`` gives the
variables a provider's ``from_env()`` reads to use the whole cluster, with the settings
that make it keep messages when a node dies (NATS replicas, Kafka replication factor).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

from .probes import probe_nats
from .procs import free_port, wait_until
from .servers import KafkaServer, MotoServer, NatsServer

__all__ = ["NatsCluster", "KafkaCluster"]

LOOPBACK = "127.0.0.1"


class _Cluster:
    """What both kinds share: nodes that start, crash and come back one at a time."""

    nodes: list[NatsServer] | list[KafkaServer]

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``: whatever it had not persisted or replicated is gone."""
        self.nodes[index].kill()

    def start_node(self, index: int) -> None:
        """Start node ``index`` again on its port with its data; return once it answers."""
        self.nodes[index].start()

    def kill(self) -> None:
        """SIGKILL every node (the cluster's files stay until its directory is removed)."""
        for node in self.nodes:
            node.kill()

    @property
    def pids(self) -> list[int | None]:
        """Each node's process id (None for a node that is down)."""
        return [node.pid for node in self.nodes]


class NatsCluster(_Cluster):
    """``size`` nats-servers with JetStream, routed to each other on loopback.

    Each node has its own store directory and a monitoring port (``/connz`` says which
    node a client is connected to). Streams abe creates get ``size`` replicas
    (``ABE_NATS_REPLICAS``), so any one node may die without losing an acknowledged message.
    """

    def __init__(self, directory: Path, *, size: int = 3, binary: str | None = None) -> None:
        self.directory = directory
        self.size = size
        routes = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for index in range(size):
            others = ",".join(
                f"nats://{LOOPBACK}:{port}" for port in routes if port != routes[index]
            )
            extra = [
                "--cluster_name",
                "abe-test",
                "--cluster",
                f"nats://{LOOPBACK}:{routes[index]}",
            ]
            extra += ["--routes", others, "-m", str(self.monitor_ports[index])]
            node_dir = directory / f"node-{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsServer(node_dir, extra_args=extra, binary=binary))

    @property
    def url(self) -> str:
        """``NATS_URL`` listing every node."""
        return ",".join(node.url for node in self.nodes)

    def env(self) -> dict[str, str]:
        """The variables abe-mq-nats reads: every node, and streams replicated to all of them."""
        return {"NATS_URL": self.url, "ABE_NATS_REPLICAS": str(self.size)}

    def start(self, timeout: float = 60.0) -> None:
        """Start every node that is down, then wait until JetStream answers through the cluster."""
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until JetStream (its meta leader elected) answers on every running node."""
        for node in self.nodes:
            if node.running:
                wait_until(
                    lambda node=node: probe_nats(node.url),  # type: ignore[misc]
                    timeout=timeout,
                    what=f"JetStream through cluster node {node.url}",
                )

    def start_node(self, index: int) -> None:
        """Start node ``index`` again; return once it answers JetStream requests."""
        node = self.nodes[index]
        node.start()
        wait_until(lambda: probe_nats(node.url), timeout=60.0, what=f"JetStream on {node.url}")

    def client_counts(self, name: str = "abe") -> list[int]:
        """How many clients called ``name`` each node serves now (0 for a node that is down)."""
        counts = []
        for node, port in zip(self.nodes, self.monitor_ports, strict=True):
            if not node.running:
                counts.append(0)
                continue
            try:
                url = f"http://{LOOPBACK}:{port}/connz?limit=1024"
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    connz = json.load(response)
            except OSError:
                counts.append(0)
                continue
            conns = connz.get("connections") or []
            counts.append(sum(1 for conn in conns if conn.get("name") == name))
        return counts

    def busiest_node(self) -> int:
        """The node serving the most abe clients: the one whose death they must survive."""
        counts = self.client_counts()
        return max(range(self.size), key=lambda index: counts[index])

    def describe(self) -> str:
        """One line for reports."""
        return f"{self.size} nats-servers -js, routes on loopback, R{self.size} streams"


class KafkaCluster(_Cluster):
    """``size`` Tansu brokers storing in one S3 bucket on moto: one cluster, stateless brokers.

    Tansu keeps nothing a client relies on in a broker: records, offsets and group state
    are in the bucket, so any broker serves any partition and one may die at any time.
    Each broker advertises only itself, aiokafka keeps to the brokers metadata names (it
    never goes back to its bootstrap list) and starts from a random one of the brokers it
    is given (``collect_hosts`` shuffles them), so a client given every broker stays on
    one chosen by chance: :meth:`bootstrap_at` gives one broker, to place a client on it.
    """

    def __init__(
        self, directory: Path, s3: MotoServer, *, size: int = 3, binary: str | None = None
    ) -> None:
        self.directory = directory
        self.size = size
        self.bucket = f"abe-kafka-cluster-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(self.bucket)
        self.nodes: list[KafkaServer] = [
            KafkaServer(directory / f"broker-{index}", s3=s3, bucket=self.bucket, binary=binary)
            for index in range(size)
        ]

    @property
    def bootstrap(self) -> str:
        """``KAFKA_BOOTSTRAP_SERVERS`` listing every broker (aiokafka uses one at random)."""
        return ",".join(node.bootstrap for node in self.nodes)

    def bootstrap_at(self, index: int) -> str:
        """``KAFKA_BOOTSTRAP_SERVERS`` naming broker ``index`` alone: a client given it uses it."""
        return self.nodes[index % self.size].bootstrap

    def env(self, at: int | None = None) -> dict[str, str]:
        """The variables abe-mq-kafka reads: every broker (or broker ``at`` alone),
        replication factor, no idempotence.

        The producer always asks for acks=all; Tansu answers InitProducerId with an error,
        so the idempotent producer is off, as for the single Tansu broker.
        """
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap if at is None else self.bootstrap_at(at),
            "ABE_KAFKA_REPLICATION_FACTOR": str(self.size),
            "ABE_KAFKA_IDEMPOTENT": "false",
        }

    def start(self) -> None:
        """Start every broker that is down."""
        for node in self.nodes:
            node.start()

    def describe(self) -> str:
        """One line for reports."""
        return f"{self.size} tansu brokers on s3://{self.bucket}/ (moto)"
