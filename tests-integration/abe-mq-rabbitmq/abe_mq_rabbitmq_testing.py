"""What a plain aio-pika client does to use abe's keys (the wire format, for tests)."""

from __future__ import annotations

from typing import Any

import aio_pika


async def declare_key(channel: aio_pika.abc.AbstractChannel, key: str) -> Any:
    """What a plain client declares to write to a key: the exchange and its log, bound."""
    exchange = await channel.declare_exchange(key, aio_pika.ExchangeType.FANOUT, durable=True)
    log = await channel.declare_queue(key, durable=True, arguments={"x-queue-type": "stream"})
    await log.bind(exchange, routing_key=key)
    return exchange
