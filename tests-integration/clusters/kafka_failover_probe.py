"""What a raw aiokafka group does on three Tansu brokers (one moto-S3 bucket) when one dies.

    .nox/clusters/bin/python tests-integration/clusters/kafka_failover_probe.py [--rebalance 17]

Three AIOKafkaConsumer members of one group, member n given broker n alone and abe's
consumer options (KafkaSettings.consumer_options(), session 2 s and redelivery 5 s as in
the failover test; --rebalance overrides rebalance_timeout), read a topic that a producer
on broker 0 writes to; broker 1 is SIGKILLed, kept down --down seconds, started again.
--shuffled gives each member every broker instead, its own first, as the failover test
once did: aiokafka shuffles the list, so members land on any broker ("member n uses
broker k" says which). --during-rebalance S has a fourth member join S seconds before the
kill. Every half second it prints what each member received and holds, and what each live
broker answers for the group (FindCoordinator, DescribeGroups) and the topic (leaders);
at the end, each member's longest gap, and when a record sent after the kill had been
read from every partition (the figure the failover test bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from abe_brokers.clusters import KafkaCluster
from abe_brokers.servers import MotoServer
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DescribeGroupsRequest
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.metadata import MetadataRequest

from abe_mq_kafka import KafkaSettings

KILLED = 1
KILLED_AT_MS = [float("inf")]
"""When broker KILLED was killed, in the producer's record timestamps (epoch ms)."""


class Member:
    """One group member: counts the records it gets, commits after each batch."""

    def __init__(self, index: int, consumer: AIOKafkaConsumer) -> None:
        self.index, self.consumer = index, consumer
        self.count, self.last, self.times = 0, 0.0, [0.0]
        self.broker = -1  # the broker it uses
        self.fresh: dict[int, float] = {}  # when it first received a record sent after the kill

    async def run(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200)
                got = sum(len(records) for records in batches.values())
                if got:
                    self.count += got
                    self.last = time.monotonic()
                    self.times.append(self.last)
                    for tp, records in batches.items():
                        if any(r.timestamp >= KILLED_AT_MS[0] for r in records):
                            self.fresh.setdefault(tp.partition, self.last)
                    await self.consumer.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the run is about what happens: print it and go on
                print(f"  member {self.index}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2)

    def assigned(self) -> list[int]:
        return sorted(tp.partition for tp in self.consumer.assignment())


async def ask(bootstrap: str, group: str, topic: str) -> str:
    """What one broker says: the group's coordinator, its state and members, the leaders."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=1500)
    try:
        await asyncio.wait_for(client.bootstrap(), 1.5)
        node = next(iter(client.cluster.brokers())).nodeId
        coordinator = await client.send(node, FindCoordinatorRequest(group, 0))
        groups = await client.send(node, DescribeGroupsRequest([group]))
        meta = await client.send(node, MetadataRequest([topic]))
        described = groups.groups[0]
        leaders = {p[1]: p[2] for t in meta.topics for p in t[-1 if len(t) == 3 else 3]}
        port = coordinator.port
        return (
            f"node {node}: coordinator {coordinator.coordinator_id}@{port} "
            f"group {described[2]} members {len(described[-1])} "
            f"leaders {sorted(set(leaders.values()))}"
        )
    except Exception as exc:
        return f"{type(exc).__name__}"
    finally:
        await client.close()


async def produce(bootstrap: str, topic: str, stop: asyncio.Event, rate: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        number = 0
        while not stop.is_set():
            await producer.send_and_wait(topic, str(number).encode(), key=str(number).encode())
            number += 1
            await asyncio.sleep(1 / rate)
    finally:
        await producer.stop()


def gaps(member: Member, since: float) -> float:
    """The longest time after ``since`` the member went without a record."""
    times = [t for t in member.times if t >= since] + [time.monotonic()]
    points = [since, *times]
    return max(b - a for a, b in itertools.pairwise(points))


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="abe-kafka-probe-"))
    moto = MotoServer(root)
    moto.start()
    cluster = KafkaCluster(root, moto, size=3)
    cluster.start()
    topic, group = f"probe-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    members: list[Member] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_at(0))
        await admin.start()
        await admin.create_topics([NewTopic(topic, 6, 3)])
        await admin.close()
        for index in range(3):
            settings = KafkaSettings(
                bootstrap_servers=(
                    ",".join(cluster.nodes[(index + k) % 3].bootstrap for k in range(3))
                    if args.shuffled
                    else cluster.bootstrap_at(index)
                ),
                idempotent=False,
                session_timeout=args.session,
                redelivery_timeout=5.0,
                rebalance_timeout=args.rebalance,
            )
            options: dict[str, Any] = settings.consumer_options()
            if index == 0:
                print("consumer options:", {k: v for k, v in options.items() if "ms" in k})
            consumer = AIOKafkaConsumer(topic, group_id=group, **options)
            await consumer.start()
            members.append(Member(index, consumer))
            port = next(iter(consumer._client.cluster.brokers())).port  # Tansu names itself alone
            used = [node.port for node in cluster.nodes].index(port)
            members[-1].broker = used
            print(f"member {index} uses broker {used}")
        tasks = [asyncio.create_task(m.run()) for m in members]
        tasks.append(asyncio.create_task(produce(cluster.bootstrap_at(0), topic, stop, 50)))
        start = time.monotonic()
        killed_at = back_at = 0.0
        while time.monotonic() - start < args.warmup + args.down + args.after:
            now = time.monotonic() - start
            if not killed_at and now >= args.warmup:
                if args.during_rebalance:  # a fourth member joins: the group rebalances
                    extra = AIOKafkaConsumer(topic, group_id=group, **options)
                    await extra.start()
                    members.append(Member(len(members), extra))
                    tasks.append(asyncio.create_task(members[-1].run()))
                    await asyncio.sleep(args.during_rebalance)
                cluster.kill_node(KILLED)
                killed_at = time.monotonic()
                KILLED_AT_MS[0] = time.time() * 1000
                print(f"--- t={now:.1f} broker {KILLED} SIGKILLed")
            if killed_at and not back_at and now >= args.warmup + args.down:
                cluster.start_node(KILLED)
                back_at = time.monotonic()
                print(f"--- t={now:.1f} broker {KILLED} started again")
            said = await asyncio.gather(
                *(ask(node.bootstrap, group, topic) for node in cluster.nodes)
            )
            held = " ".join(f"m{m.index}:{m.count}{m.assigned()}" for m in members)
            print(f"t={now:5.1f} {held} | " + " | ".join(f"b{i} {s}" for i, s in enumerate(said)))
            await asyncio.sleep(0.5)
        for member in members:
            gap = gaps(member, killed_at)
            print(f"member {member.index}: longest gap after the kill {gap:.1f} s")
        print(f"broker {KILLED} was down {back_at - killed_at:.1f} s")
        alive = [m for m in members if m.broker != KILLED]
        firsts = [min((m.fresh[p] for m in alive if p in m.fresh), default=0) for p in range(6)]
        moved = max(firsts) - killed_at if all(firsts) else None
        print(f"a record sent after the kill read from every partition {moved} s after it")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member in members:
            await asyncio.wait_for(member.consumer.stop(), 10)
        cluster.kill()
        moto.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session", type=float, default=2.0, help="session timeout, s")
    parser.add_argument("--rebalance", type=float, default=None, help="rebalance timeout, s")
    parser.add_argument(
        "--during-rebalance",
        type=float,
        default=0.0,
        help="start a fourth member this many seconds before the kill (a rebalance in progress)",
    )
    parser.add_argument("--shuffled", action="store_true", help="every broker to each member")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--down", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=8.0)
    asyncio.run(main(parser.parse_args()))
