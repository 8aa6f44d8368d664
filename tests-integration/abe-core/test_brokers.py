"""Smoke tests for the broker fixtures every provider's integration tests build on.

Each session fixture must yield a broker that does one real round trip with the raw client
library the provider uses; each factory must give a server that keeps its data across a
restart (and kill -9 where the broker persists). The selection logic (skip, or fail when
``ABE_REQUIRE_BROKERS`` names the kind) is tested on its own, without brokers.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import nats
import nats.errors
import pytest
import redis
import redis.exceptions
from abe_brokers import (
    KafkaBroker,
    KafkaServerFactory,
    NatsBroker,
    NatsServerFactory,
    RabbitmqBroker,
    RabbitmqServerFactory,
    RedisBroker,
    RedisCluster,
    RedisServerFactory,
    RedisUser,
    ServerStartError,
    SqsBroker,
    TlsFiles,
    required_kinds,
    resolve,
    unique_name,
)
from abe_brokers.brokers import from_env, redact
from abe_brokers.selection import EnvAddressUnusable, StepSkipped
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from redis.asyncio import Redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient

PAYLOAD = {"order": 1, "note": "smoke"}
BODY = json.dumps(PAYLOAD).encode()


# --- session brokers: one round trip each with the provider's client library ---------


@pytest.mark.asyncio
async def test_redis_broker_round_trip(redis_broker: RedisBroker) -> None:
    """PING, then XADD one entry with the payload in field ``data`` and read it back."""

    client = Redis.from_url(redis_broker.url)
    key = unique_name("abe-smoke")
    try:
        assert await client.ping()
        entry_id = await client.xadd(key, {"data": BODY})
        assert await client.xrange(key) == [(entry_id, {b"data": BODY})]
    finally:
        await client.delete(key)
        await client.aclose()


@pytest.mark.asyncio
async def test_nats_broker_round_trip(nats_broker: NatsBroker) -> None:
    """Add a JetStream stream, publish with a header, pull-fetch it back and ack."""

    nc = await nats.connect(nats_broker.url, connect_timeout=5, allow_reconnect=False)
    js = nc.jetstream(timeout=5)
    stream = unique_name("abe-smoke")
    try:
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.orders", BODY, headers={"abe-attempt": "1"})
        assert ack.stream == stream
        sub = await js.pull_subscribe(f"{stream}.orders", durable="smoke", stream=stream)
        [msg] = await sub.fetch(1, timeout=5)
        assert (msg.data, (msg.headers or {}).get("abe-attempt")) == (BODY, "1")
        await msg.ack()
    finally:
        await js.delete_stream(stream)
        await nc.close()


@pytest.mark.asyncio
async def test_kafka_broker_round_trip(kafka_broker: KafkaBroker) -> None:
    """Create a one-partition topic, produce one record with a header, consume it back."""

    topic = unique_name("abe-smoke")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await producer.start()
        sent = await producer.send_and_wait(topic, BODY, key=b"k", headers=[("abe-attempt", b"1")])
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0)])
        record = await asyncio.wait_for(consumer.getone(), 10)
        assert (record.offset, record.value, record.key) == (sent.offset, BODY, b"k")
        assert list(record.headers) == [("abe-attempt", b"1")]
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()


@pytest.mark.asyncio
async def test_sqs_broker_round_trip(sqs_broker: SqsBroker) -> None:
    """Create a queue, send one message with an attribute, receive and delete it."""

    name = unique_name("abe-smoke")
    async with get_session().create_client("sqs", **sqs_broker.client_kwargs()) as sqs:
        queue_url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        try:
            await sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=BODY.decode(),
                MessageAttributes={"abe-attempt": {"DataType": "String", "StringValue": "1"}},
            )
            response = await sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=5,
                MessageAttributeNames=["All"],
            )
            [message] = response["Messages"]
            assert json.loads(message["Body"]) == PAYLOAD
            assert message["MessageAttributes"]["abe-attempt"]["StringValue"] == "1"
            await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        finally:
            await sqs.delete_queue(QueueUrl=queue_url)


@pytest.mark.asyncio
async def test_rabbitmq_broker_round_trip(rabbitmq_broker: RabbitmqBroker) -> None:
    """Declare a queue, publish one message with a header (confirmed), get it and delete."""
    import aio_pika

    name = unique_name("abe-smoke")
    connection = await aio_pika.connect(rabbitmq_broker.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True)
        try:
            message = aio_pika.Message(BODY, headers={"abe-attempt": "1"})
            await channel.default_exchange.publish(message, routing_key=name)
            got = await queue.get(timeout=5, fail=True)
            assert got is not None
            assert json.loads(got.body) == PAYLOAD
            assert got.headers["abe-attempt"] == "1"
            await got.ack()
        finally:
            await channel.queue_delete(name)
    finally:
        await connection.close()


# --- test-owned servers: data survives restart (and kill -9 where persisted) ---------


async def _redis_entries(url: str, key: str, **kwargs: Any) -> list[bytes]:

    client = Redis.from_url(url, **kwargs)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(key)  # type: ignore[assignment]
        return [fields[b"data"] for _, fields in entries]
    finally:
        await client.aclose()


async def _redis_add(url: str, key: str, data: bytes) -> None:

    client = Redis.from_url(url)
    try:
        await client.xadd(key, {"data": data})
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_redis_server_survives_restart_and_kill(
    redis_server_factory: RedisServerFactory,
) -> None:
    """AOF with fsync always: entries written before a restart and before kill -9 are kept."""
    server = redis_server_factory()
    port = server.port
    await _redis_add(server.url, "orders", b"1")
    await server.arestart()
    assert await _redis_entries(server.url, "orders") == [b"1"]
    await _redis_add(server.url, "orders", b"2")
    await server.akill()
    assert not server.running
    await server.astart()
    assert server.port == port
    assert await _redis_entries(server.url, "orders") == [b"1", b"2"]


@pytest.mark.asyncio
async def test_redis_server_auth_and_tls(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles
) -> None:
    """Password, an ACL user and TLS with client certificates all work; a wrong password fails."""

    server = redis_server_factory(
        password="default-secret",
        users=[RedisUser("alice", "alice-secret")],
        tls=tls_files,
        tls_client_auth=True,
    )
    assert server.url.startswith("rediss://")
    ssl = server.ssl_kwargs()
    assert await _redis_entries(server.url, "nothing", **ssl) == []
    assert await _redis_entries(server.url_for("alice", "alice-secret"), "nothing", **ssl) == []
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _redis_entries(server.url_for("alice", "wrong"), "nothing", **ssl)
    with pytest.raises(redis.exceptions.ConnectionError):
        await _redis_entries(server.url, "nothing", **server.ssl_kwargs(with_client_cert=False))


def test_server_that_dies_on_start_reports_its_output(
    redis_server_factory: RedisServerFactory,
) -> None:
    """A server that exits while starting fails fast, quoting what it printed."""
    with pytest.raises(ServerStartError, match=r"(?s)exited with code .*no-such-directive"):
        redis_server_factory(extra_args=["--no-such-directive", "1"])


@pytest.mark.asyncio
async def test_nats_server_survives_restart_and_kill(
    nats_server_factory: NatsServerFactory,
) -> None:
    """A file-store stream keeps messages across a graceful restart and a kill -9."""

    server = nats_server_factory()

    async def publish(data: bytes) -> None:
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(name="ORDERS", subjects=["orders.>"])
            await js.publish("orders.new", data)
        finally:
            await nc.close()

    async def read_all(expected: int) -> list[bytes]:
        nc = await nats.connect(server.url, allow_reconnect=False)
        try:
            sub = await nc.jetstream(timeout=5).pull_subscribe("orders.>", stream="ORDERS")
            msgs = await sub.fetch(expected, timeout=5)
            return [m.data for m in msgs]
        finally:
            await nc.close()

    await publish(b"1")
    await server.arestart()
    assert await read_all(1) == [b"1"]
    await publish(b"2")
    await server.akill()
    await server.astart()
    assert await read_all(2) == [b"1", b"2"]


@pytest.mark.asyncio
async def test_nats_server_auth_and_tls(
    nats_server_factory: NatsServerFactory, tls_files: TlsFiles
) -> None:
    """Token auth refuses a client without the token; user/password over verified TLS works."""

    tokened = nats_server_factory(token="s3cret-token")
    nc = await nats.connect(tokened.url, allow_reconnect=False)
    await nc.close()
    bare = f"nats://{tokened.host}:{tokened.port}"
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(bare, allow_reconnect=False, max_reconnect_attempts=0)

    secured = nats_server_factory(user="abe", password="pw", tls=tls_files, tls_verify=True)
    assert secured.url.startswith("tls://abe:pw@")
    nc = await nats.connect(secured.url, tls=tls_files.client_context(), allow_reconnect=False)
    try:
        await nc.jetstream(timeout=5).account_info()
    finally:
        await nc.close()


@pytest.mark.asyncio
async def test_kafka_server_survives_restart_and_kill(
    kafka_server_factory: KafkaServerFactory,
) -> None:
    """Tansu on moto S3: acknowledged records survive a graceful restart and a kill -9."""

    server = kafka_server_factory()
    tp = TopicPartition("orders", 0)

    async def produce(value: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=server.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(tp.topic, value, partition=0)
        finally:
            await producer.stop()

    async def read_all(expected: int) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=server.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            values: list[bytes] = []
            while len(values) < expected:
                batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=1000), 10)
                values += [r.value for r in batch.get(tp, []) if r.value is not None]
            return values
        finally:
            await consumer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(tp.topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    await produce(b"1")
    await server.arestart()
    assert await read_all(1) == [b"1"]
    await produce(b"2")
    await server.akill()
    await server.astart()
    assert await read_all(2) == [b"1", b"2"]


@pytest.mark.asyncio
async def test_rabbitmq_node_keeps_quorum_queues_across_restart(
    rabbitmq_server_factory: RabbitmqServerFactory,
) -> None:
    """A node of the test's own: a persistent message in a quorum queue survives a restart."""
    import aio_pika

    server = rabbitmq_server_factory()
    arguments = {"x-queue-type": "quorum"}

    async def channel() -> Any:
        connection = await aio_pika.connect(server.url)
        return connection, await connection.channel(publisher_confirms=True)

    connection, chan = await channel()
    queue = await chan.declare_queue("kept", durable=True, arguments=arguments)
    message = aio_pika.Message(b"1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await chan.default_exchange.publish(message, routing_key="kept")
    await connection.close()
    await server.arestart()
    connection, chan = await channel()
    try:
        queue = await chan.declare_queue("kept", durable=True, arguments=arguments)
        got = await queue.get(timeout=10, fail=True)
        assert got is not None
        assert got.body == b"1"
        await got.ack()
    finally:
        await connection.close()


# --- the Redis cluster: it forms, a master dies, its replica takes over, it rejoins ----


def test_redis_cluster_fails_over_and_the_old_master_rejoins(redis_cluster: RedisCluster) -> None:
    """Six nodes, three masters with a replica each; an entry a replica confirmed (WAIT 1)
    survives its master's SIGKILL: the replica takes the slot and serves the entry and new
    writes; the old master, started again, is its replica and has the write it missed."""
    roles = sorted(redis_cluster.role(index) for index in range(redis_cluster.size))
    assert roles == ["master"] * 3 + ["slave"] * 3
    key = unique_name("abe-smoke")
    old = redis_cluster.master_of(key)
    master = redis.Redis(port=redis_cluster.nodes[old].port, socket_timeout=10)
    try:
        first = master.xadd(key, {"data": BODY})
        assert master.wait(1, 5000) == 1  # the replica has it
    finally:
        master.close()

    redis_cluster.kill_node(old)
    new = redis_cluster.wait_master_of(key, not_on=old)
    nodes = [ClusterNode(host, port) for host, port in redis_cluster.startup_nodes]
    client = ClusterClient(startup_nodes=nodes, socket_timeout=5)  # the first node may be down
    try:
        assert client.xrange(key) == [(first, {b"data": BODY})]
        second = client.xadd(key, {"data": b"2"})

        redis_cluster.start_node(old)  # returns once it is back, in sync with its master
        assert (redis_cluster.role(old), redis_cluster.master_of(key)) == ("slave", new)
        rejoined = redis.Redis(port=redis_cluster.nodes[old].port, socket_timeout=5)
        try:
            rejoined.execute_command("READONLY")  # a replica answers for its master's slots
            assert [entry_id for entry_id, _ in rejoined.xrange(key)] == [first, second]
        finally:
            rejoined.close()
        client.delete(key)
    finally:
        client.close()


# --- the selection logic itself (no brokers needed) --------------------------------


def test_required_kinds_parsing() -> None:
    """``ABE_REQUIRE_BROKERS`` takes kinds, distribution names or ``all``; typos are errors."""
    assert required_kinds(None) == frozenset()
    assert required_kinds(" ") == frozenset()
    clusters = {"redis-cluster", "nats-cluster", "kafka-cluster"}
    assert required_kinds("all") == {"redis", "nats", "kafka", "sqs", "rabbitmq", *clusters}
    assert required_kinds("Redis, abe-mq-kafka,,") == {"redis", "kafka"}
    assert required_kinds("redis-cluster,nats-cluster,Kafka-Cluster") == clusters
    with pytest.raises(ValueError, match="reddis"):
        required_kinds("reddis")


def _skipped(reason: str) -> object:
    raise StepSkipped(reason)


def _broken() -> object:
    raise ConnectionRefusedError("refused")


def _dead_env() -> object:
    raise EnvAddressUnusable("ABE_TEST_REDIS_URL=redis://x did not answer")


def test_first_working_step_wins_and_later_steps_do_not_run() -> None:
    """Steps run in order; the first value wins; nothing after it is tried."""
    calls: list[str] = []

    def step(name: str, value: object) -> object:
        calls.append(name)
        if value is None:
            raise StepSkipped(f"{name} found nothing")
        return value

    result = resolve(
        "redis",
        [
            ("env", lambda: step("env", None)),
            ("running", lambda: step("running", "broker")),
            ("process", lambda: step("process", "other")),
        ],
        required=False,
    )
    assert (result.verdict, result.value, calls) == ("ok", "broker", ["env", "running"])
    assert [a.outcome for a in result.attempts] == ["skipped", "ok"]


@pytest.mark.parametrize(("required", "verdict"), [(False, "skip"), (True, "fail")])
def test_nothing_works_skips_unless_required(required: bool, verdict: str) -> None:
    """With no broker: skip with every step's reason, or fail when the kind is required."""
    result = resolve(
        "kafka",
        [("env", lambda: _skipped("not set")), ("process", _broken)],
        required=required,
    )
    assert result.verdict == verdict
    assert "env: not set" in result.message
    assert "process: ConnectionRefusedError: refused" in result.message


def test_dead_env_address_fails_even_when_not_required() -> None:
    """A dead address given in the environment fails and does not fall through to other steps."""
    result = resolve("redis", [("env", _dead_env), ("running", lambda: "fallback")], required=False)
    assert result.verdict == "fail"
    assert [a.step for a in result.attempts] == ["env"]


def test_env_step_vets_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The env step makes a real request and hides the password when the address is dead."""
    monkeypatch.delenv("ABE_TEST_REDIS_URL", raising=False)
    with pytest.raises(StepSkipped):
        from_env("redis")
    monkeypatch.setenv("ABE_TEST_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(EnvAddressUnusable) as info:
        from_env("redis")
    assert "hunter2" not in str(info.value)
    assert redact("nats://tok@h:1") == "nats://***@h:1"
    assert os.environ["ABE_TEST_REDIS_URL"].endswith(":1/0")
