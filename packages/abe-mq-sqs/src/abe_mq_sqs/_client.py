"""The aiobotocore client both the backend and the raw baseline use: one place for its config."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.exceptions import SSLError  # type: ignore[import-untyped]

from abe_mq_sqs._settings import SqsSettings

__all__ = ["MAX_CONNECTIONS", "sqs_client"]

MAX_CONNECTIONS = 64
"""aiohttp connections per client: long polls hold one each, sends must still find one."""


@contextlib.asynccontextmanager
async def sqs_client(settings: SqsSettings, *, agent: str) -> AsyncIterator[Any]:
    """`session.create_client("sqs", ...)` for these settings, as an async context manager.

    Explicit keys win over the profile; without either, botocore's credential chain
    (web identity, containers, instance metadata...) resolves them on the first call.
    Timeouts: `connect_timeout` per connection; the read timeout leaves room for a long
    poll (the backend bounds every other call by its operation timeout itself); the
    standard retry mode makes `max_attempts` attempts of a throttled or failed call, but
    not of a failed TLS handshake, which fails the same way every time (backing off and
    trying again would only let the operation timeout hide why).
    """
    access_key, secret_key = settings.access_key_id, settings.secret_access_key
    keys = access_key is not None and secret_key is not None and bool(access_key and secret_key)
    session = (
        AioSession(profile=settings.profile) if settings.profile and not keys else AioSession()
    )
    config = AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.wait_time_seconds + settings.operation_timeout,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=MAX_CONNECTIONS,
        user_agent_extra=agent,
    )
    arguments: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.endpoint_url:
        arguments["endpoint_url"] = settings.endpoint_url
    if keys and access_key is not None and secret_key is not None:
        arguments["aws_access_key_id"] = access_key.reveal()
        arguments["aws_secret_access_key"] = secret_key.reveal()
        if settings.session_token:
            arguments["aws_session_token"] = settings.session_token.reveal()
    async with session.create_client("sqs", **arguments) as client:
        client.meta.events.register_first("needs-retry.sqs", _tls_failure_is_final)
        yield client


def _tls_failure_is_final(caught_exception: BaseException | None = None, **_: Any) -> None:
    """A needs-retry handler that raises a failed TLS handshake at once instead of retrying."""
    if isinstance(caught_exception, SSLError):
        raise caught_exception
