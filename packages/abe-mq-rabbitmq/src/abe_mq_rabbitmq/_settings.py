"""RabbitmqSettings: each variable declared once, for from_env(), `abe backends` and the README."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from abe.provider import BackendSettings, setting

__all__ = ["RabbitmqSettings"]


def _url(text: str) -> str:
    """An amqp:// or amqps:// URL with a numeric port; the password in it stays a secret."""
    parts = urlsplit(text)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError("must start with amqp:// or amqps:// (TLS)")
    if not parts.hostname:
        raise ValueError("must name the broker's host, e.g. amqp://user:password@host:5672/")
    _ = parts.port  # a port that is not a number raises ValueError
    return text


@dataclass(frozen=True, kw_only=True)
class RabbitmqSettings(BackendSettings):
    """Where RabbitMQ is and how abe uses it (the common settings: BackendSettings)."""

    url: str = setting(
        "RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/",
        "Where RabbitMQ is: amqp://user:password@host:port/vhost, amqps:// for TLS. The "
        "password is never shown.",
        parse=_url,
        url=True,
    )
    delivery_limit: int | None = setting(
        "ABE_RABBITMQ_DELIVERY_LIMIT",
        100,
        "The group queues' x-delivery-limit: after this many deliveries RabbitMQ itself "
        "dead-letters a message to KEY-dlq (a backstop behind the consumer's max_attempts).",
        minimum=1,
    )
    max_age: str | None = setting(
        "ABE_RABBITMQ_MAX_AGE",
        None,
        "How long each key's log stream keeps messages for groups made later (x-max-age, "
        "e.g. 7D or 12h). Unset: kept until the key is deleted.",
    )

    backend_name: ClassVar[str] = "rabbitmq"
