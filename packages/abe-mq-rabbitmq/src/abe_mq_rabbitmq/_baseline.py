"""The `abe bench` workloads written with aio-pika alone: what abe's overhead is measured against.

The same broker and URL as the backend, a connection of its own, the same layout (a
durable fanout exchange per key with a stream bound to it, a quorum queue per group) and
the payload bytes abe would send, as persistent messages with publisher confirms:

    publish           one awaited, confirmed publish per message
    publish_many      a batch encoded, then its publishes sent with their confirms awaited
                      together (abe too checks a whole batch before sending any of it)
    end_to_end        basic.consume (prefetch 100) and one basic.ack per message, while one
                      publisher sends one message at a time
    drain_ack_each    the backlog consumed with one awaited basic.ack per message
    drain_batched     the backlog consumed with one basic.ack (multiple) per 50 messages, half
                      the prefetch of 100 (abe's consume() asks for 100 per fetch), so the
                      other half keeps coming while a batch is handled

It deletes the exchanges and queues it made when closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
from abe.benchmarking import Arrivals, DrainClock, Measurement, Progress, Workload, bench_payload
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from abe_mq_rabbitmq._settings import RabbitmqSettings

__all__ = ["RawRabbitmqBaseline"]

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_PREFETCH = 100


class RawRabbitmqBaseline:
    """`abe.benchmarking.RawBaseline` (and `RawDrains`) for RabbitMQ, with aio-pika's calls."""

    def __init__(self, settings: RabbitmqSettings) -> None:
        self._settings = settings
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._queues: list[str] = []

    @property
    def name(self) -> str:
        """The client library and its version."""
        return f"aio-pika {aio_pika.__version__}"

    async def _ready(self, keys: tuple[str, ...]) -> AbstractChannel:
        """Connected, with each key's exchange and stream declared, before any clock starts."""
        if self._connection is None:
            self._connection = await aio_pika.connect(
                str(self._settings.url), timeout=self._settings.operation_timeout
            )
            self._channel = await self._connection.channel(publisher_confirms=True)
        channel = self._channel
        assert channel is not None
        for key in keys:
            if key not in self._exchanges:
                exchange = await channel.declare_exchange(key, ExchangeType.FANOUT, durable=True)
                log = await channel.declare_queue(
                    key, durable=True, arguments={"x-queue-type": "stream"}
                )
                await log.bind(exchange, routing_key=key)
                self._exchanges[key] = exchange
                self._queues.append(key)
        return channel

    async def _group(self, workload: Workload) -> list[aio_pika.abc.AbstractQueue]:
        """The group's quorum queue on each key, bound to its exchange."""
        channel = await self._ready(workload.all_keys)
        queues = []
        for key in workload.all_keys:
            name = f"{key}:{workload.group}"
            queue = await channel.declare_queue(
                name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(self._exchanges[key], routing_key=key)
            self._queues.append(name)
            queues.append(queue)
        return queues

    def _send(self, key: str, payload: dict[str, Any]) -> Any:
        return self._exchanges[key].publish(_message(payload), routing_key=key)

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        """One awaited, confirmed publish per message."""
        await self._ready(workload.all_keys)
        clock = asyncio.get_running_loop().time
        latencies: list[float] = []
        started = clock()
        for seq in range(workload.messages):
            before = clock()
            await self._send(workload.key_of(seq), bench_payload(seq, workload.payload_bytes))
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        """Each batch's publishes sent at once, their confirms awaited together."""
        await self._ready(workload.all_keys)
        clock = asyncio.get_running_loop().time
        latencies: list[float] = []
        started = clock()
        for index, (key, payloads) in enumerate(workload.backlog()):
            before = clock()
            messages = [_message(payload) for payload in payloads]  # all before any is sent
            exchange = self._exchanges[key]
            await asyncio.gather(*(exchange.publish(m, routing_key=key) for m in messages))
            del messages  # freed when sent, as abe frees its bodies on return
            latencies.append(clock() - before)
            progress(min((index + 1) * workload.batch_size, workload.messages))
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        """basic.consume and one basic.ack per message, while one publisher sends."""
        queues = await self._group(workload)
        assert self._connection is not None
        reader = await self._connection.channel()
        await reader.set_qos(prefetch_count=_PREFETCH)
        arrivals = Arrivals(workload, progress)
        done = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrivals.record(json.loads(message.body))
            await message.ack()
            if arrivals.complete:
                done.set()

        async def receive() -> None:
            for queue in queues:
                await (await reader.get_queue(queue.name, ensure=False)).consume(on_message)
            await done.wait()

        async def send() -> None:
            for seq in range(workload.messages):
                await self._send(workload.key_of(seq), bench_payload(seq, workload.payload_bytes))

        try:
            return await arrivals.measure(send, receive)
        finally:
            await reader.close()

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog consumed with one awaited basic.ack per message."""
        return await self._drain(workload, progress, every=1)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog consumed with one basic.ack (multiple) per `_PREFETCH // 2` messages."""
        return await self._drain(workload, progress, every=_PREFETCH // 2)

    async def _drain(self, workload: Workload, progress: Progress, every: int) -> Measurement:
        queues = await self._group(workload)
        for key, payloads in workload.backlog():
            await asyncio.gather(*(self._send(key, payload) for payload in payloads))
        assert self._connection is not None
        reader = await self._connection.channel()
        await reader.set_qos(prefetch_count=_PREFETCH)
        clock = DrainClock(workload, progress)
        unacked = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal unacked
            clock.record(json.loads(message.body))
            unacked += 1
            if unacked >= every or clock.complete:
                unacked = 0
                await message.ack(multiple=every > 1)

        try:
            for queue in queues:
                await (await reader.get_queue(queue.name, ensure=False)).consume(on_message)
            await clock.done.wait()
        finally:
            await reader.close()
        return clock.measurement()

    async def close(self) -> None:
        """Delete the exchanges and queues this baseline made and close its connection."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            channel = await connection.channel()
            for name in self._queues:
                await channel.queue_delete(name)
            for key in self._exchanges:
                await channel.exchange_delete(key)
        finally:
            await connection.close()


def _message(payload: dict[str, Any]) -> Message:
    """The persistent message carrying the payload bytes abe would send."""
    return Message(
        _encode(payload).encode(),
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
    )
