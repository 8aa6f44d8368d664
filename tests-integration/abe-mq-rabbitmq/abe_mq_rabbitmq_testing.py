"""What a plain aio-pika client does to use abe's keys (the wire format, for tests)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import aio_pika


async def declare_key(channel: aio_pika.abc.AbstractChannel, key: str) -> Any:
    """What a plain client declares to write to a key: the exchange and its log, bound."""
    exchange = await channel.declare_exchange(key, aio_pika.ExchangeType.FANOUT, durable=True)
    log = await channel.declare_queue(key, durable=True, arguments={"x-queue-type": "stream"})
    await log.bind(exchange, routing_key=key)
    return exchange


def broker_names(prefixes: tuple[str, ...]) -> set[str]:
    """The queues and exchanges on the local RabbitMQ node whose names start with `prefixes`.

    AMQP cannot list them, so this asks `rabbitmqctl` (installed with the server).
    """
    rabbitmqctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    names: set[str] = set()
    for what in ("list_queues", "list_exchanges"):
        done = subprocess.run(
            [rabbitmqctl, "-q", what, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        kind = what.removeprefix("list_")
        names.update(
            f"{kind}:{line.strip()}"
            for line in done.stdout.splitlines()
            if line.strip().startswith(prefixes)
        )
    return names
