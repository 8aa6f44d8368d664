"""Clusters owned by the tests: three nats-servers with JetStream, Tansu brokers on one bucket,
six redis-servers in cluster mode (three masters, one replica each).

Each cluster lives on free loopback ports in its own directory, is started whole by
``start()``, and can lose one node (``kill_node``: SIGKILL, as a crash) and get it back
(``start_node``: same port, same data) while clients keep running. ``env()`` gives the
variables a provider's ``from_env()`` reads to use the whole cluster, with the settings
that make it keep messages when a node dies (NATS replicas, Kafka replication factor,
Redis's confirmation by a replica).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .probes import ProbeError, probe_nats
from .procs import ServerStartError, find_binary, free_port, wait_until
from .servers import KafkaServer, MotoServer, NatsServer, RedisServer

__all__ = ["NatsCluster", "KafkaCluster", "RedisCluster", "redis_cli_binary"]

LOOPBACK = "127.0.0.1"


class _Cluster:
    """What both kinds share: nodes that start, crash and come back one at a time."""

    nodes: list[NatsServer] | list[KafkaServer] | list[RedisServer]

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
            "ABE_KAFKA_MIN_INSYNC_REPLICAS": str(min(2, self.size)),
            "ABE_KAFKA_IDEMPOTENT": "false",
        }

    def start(self) -> None:
        """Start every broker that is down."""
        for node in self.nodes:
            node.start()

    def describe(self) -> str:
        """One line for reports."""
        return f"{self.size} tansu brokers on s3://{self.bucket}/ (moto)"


def redis_cli_binary() -> str:
    """Path of ``redis-cli`` (``ABE_TEST_REDIS_CLI`` overrides): it forms the Redis cluster."""
    return os.environ.get("ABE_TEST_REDIS_CLI") or find_binary(
        "redis-cli", "/usr/bin/redis-cli", "/usr/local/bin/redis-cli"
    )


SLOTS = 16384
"""Hash slots in a Redis cluster: every one must be served for the cluster to be ready."""


class RedisCluster(_Cluster):
    """redis-servers in cluster mode on loopback: three masters with one replica each (six
    nodes) by default, formed by ``redis-cli --cluster create``.

    Every node appends each write to its AOF (fsync always) and keeps its cluster identity
    in ``nodes.conf`` in its own directory, so a node killed and started again rejoins with
    its data: a master whose replica was promoted meanwhile comes back as that one's
    replica. The node timeout is short (2 s) so a replica takes over soon after its master
    dies. ``env()`` asks abe-mq-redis to confirm a publish only once a replica has it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        binary: str | None = None,
        cli: str | None = None,
    ) -> None:
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        self.size = masters * (1 + replicas)
        self.cli = cli or redis_cli_binary()
        self._formed = False
        self.nodes: list[RedisServer] = []
        for index in range(self.size):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            extra += ["--cluster-node-timeout", str(node_timeout_ms)]
            # the bus port of its own (Redis 7+): port + 10000 may be taken or above 65535
            extra += ["--cluster-port", str(free_port())]
            # a replica may take over however long it was cut off: the tests kill nodes
            extra += ["--cluster-replica-validity-factor", "0"]
            # a replica's full sync starts at once, not after 5 s waiting for more replicas
            extra += ["--repl-diskless-sync-delay", "0"]
            node_dir = directory / f"node-{index}"
            self.nodes.append(RedisServer(node_dir, extra_args=extra, binary=binary))

    @property
    def url(self) -> str:
        """``REDIS_URL`` of the first node: a cluster client finds the others through it."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node: a cluster client given them starts with one down."""
        return [(node.host, node.port) for node in self.nodes]

    def env(self) -> dict[str, str]:
        """The variables abe-mq-redis reads: a node of the cluster, and a publish confirmed only
        once a replica has it (``WAIT 1``), so a master's death loses nothing confirmed."""
        return {"REDIS_URL": self.url, "ABE_REDIS_WAIT_REPLICAS": "1"}

    def start(self, timeout: float = 60.0) -> None:
        """Start every node that is down (forming the cluster the first time); return once
        every slot is served and every replica is in sync with its master."""
        for node in self.nodes:
            node.start()
        if not self._formed:
            self._create(timeout)
            self._formed = True
        self.wait_ready(timeout)

    def start_node(self, index: int) -> None:
        """Start node ``index`` again with its data; return once it is back in the cluster
        (a replica once in sync with its master) and every slot is served."""
        self.nodes[index].start()
        self.wait_ready(60.0)

    def _create(self, timeout: float) -> None:
        addresses = [f"{node.host}:{node.port}" for node in self.nodes]
        argv = [self.cli, "--cluster", "create", *addresses]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            what = f"redis-cli --cluster create: no answer in {timeout:.0f}s"
            raise ServerStartError(what) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-4000:]
            raise ServerStartError(
                f"redis-cli --cluster create exited with code {done.returncode}:\n{output}"
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node says cluster_state:ok with all slots served, and
        every running replica's link to its master is up (so ``WAIT`` can be answered)."""
        wait_until(self._check_ready, timeout=timeout, what="redis cluster")

    def _check_ready(self) -> None:
        masters = 0
        for index, node in enumerate(self.nodes):
            if not node.running:
                continue
            with self._client(index) as client:
                state = client.cluster("INFO")
                replication = client.info("replication")
            if state.get("cluster_state") != "ok" or int(state.get("cluster_slots_ok", 0)) < SLOTS:
                raise ProbeError(f"node {index} (port {node.port}): cluster {state}")
            if replication.get("role") == "master":
                masters += 1
            elif replication.get("master_link_status") != "up":
                raise ProbeError(f"node {index} (port {node.port}): replica not in sync yet")
        if masters < self.masters:
            raise ProbeError(f"{masters} masters running, {self.masters} wanted")

    @contextlib.contextmanager
    def _client(self, index: int) -> Iterator[Any]:
        """A plain redis-py client of node ``index`` alone (no cluster redirections)."""
        import redis

        node = self.nodes[index]
        client = redis.Redis(
            host=node.host, port=node.port, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            yield client
        finally:
            client.close()

    def index_of(self, host: str, port: int) -> int:
        """The index of the node listening at ``host:port``."""
        for index, node in enumerate(self.nodes):
            if (node.host, node.port) == (host, port):
                return index
        raise LookupError(f"no node of this cluster at {host}:{port}")

    def role(self, index: int) -> str:
        """``master`` or ``slave``, as node ``index`` says of itself (it must be running)."""
        with self._client(index) as client:
            return str(client.info("replication")["role"])

    def master_of(self, key: str | bytes) -> int:
        """The index of the node that serves ``key``'s hash slot now, as the running nodes
        agree; before a failover ends they may not, and this raises :class:`ProbeError`."""
        from redis.crc import key_slot

        slot = key_slot(key.encode() if isinstance(key, str) else key)
        seen: set[int] = set()
        for index, node in enumerate(self.nodes):
            if not node.running:
                continue
            with self._client(index) as client:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            for first, last, master, *_ in ranges:
                if first <= slot <= last:
                    seen.add(self.index_of(master[0].decode(), int(master[1])))
        if len(seen) != 1:
            raise ProbeError(f"slot {slot}: the running nodes name masters {sorted(seen)}")
        owner = seen.pop()
        if not self.nodes[owner].running:
            raise ProbeError(f"slot {slot}: its master, node {owner}, is down")
        return owner

    def wait_master_of(self, key: str | bytes, *, not_on: int, timeout: float = 30.0) -> int:
        """Wait until a running node other than ``not_on`` serves ``key``'s slot (a replica
        promoted after its master died); return its index."""
        found: list[int] = []

        def moved() -> None:
            owner = self.master_of(key)
            if owner == not_on:
                raise ProbeError(f"node {not_on} still serves the slot")
            found.append(owner)

        wait_until(moved, timeout=timeout, what=f"a new master for {key!r}")
        return found[-1]

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"{self.size} redis-servers in cluster mode ({self.masters} masters,"
            f" {self.replicas} replica each), AOF fsync always, WAIT {self.replicas}"
        )
