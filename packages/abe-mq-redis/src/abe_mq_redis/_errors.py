"""redis-py's exceptions and the abe errors they become, each with what to do about it."""

from __future__ import annotations

import asyncio
from typing import Any

from redis import exceptions as redis_errors

from abe.provider import (
    CONNECTION_DROPPED,
    TLS_HANDSHAKE,
    TLS_HOST_MISMATCH,
    TLS_UNTRUSTED,
    ErrorMap,
    ErrorRule,
    auth,
    config,
    invalid_key,
    payload,
    unavailable,
)

__all__ = ["ERRORS"]

_TLS_FAILED = "the TLS handshake failed: "
_CLIENT_CERTIFICATE = "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
_SLOW = (
    "the server did not answer within {:g}s; check that it is up and reachable{}, or raise "
    "ABE_MQ_OPERATION_TIMEOUT if it is only slow"
)
_PLAIN_PORT = (  # a rediss:// client waits for a handshake that a plain port never answers
    " (with rediss://, a server that does not speak TLS on this port never answers the "
    "handshake: use redis:// for a plain port)"
)
_EXHAUSTED = (
    "every pooled connection is in use; raise ABE_REDIS_POOL_SIZE or publish from fewer tasks "
    "at once"
)


def _classes(*names: str) -> list[type[BaseException]]:
    """The named classes of redis.exceptions that this redis-py has (5.3 lacks some of 6.x's)."""
    return [klass for name in names if isinstance(klass := getattr(redis_errors, name, None), type)]


def _dropped(settings: Any) -> str:
    refused = f"refuse this client's TLS certificate, or want one: set {_CLIENT_CERTIFICATE}"
    return "if this happens on every connection, the server may " + (
        refused if settings.tls else "expect TLS: use rediss://"
    )


_UNREACHABLE = [
    unavailable(
        f"{_TLS_FAILED}the server's certificate is valid, but not for the host name (or address) "
        "in REDIS_URL, so it may not be this server: write a name the certificate lists, or have "
        "it issued for this name (REDIS_TLS_CA_FILE, which only picks the CA, cannot fix this)",
        when=TLS_HOST_MISMATCH,
    ),
    unavailable(
        f"{_TLS_FAILED}the server's certificate is not signed by a trusted CA (or is not valid "
        "now). Set REDIS_TLS_CA_FILE to the CA that signed it",
        when=TLS_UNTRUSTED,
    ),
    unavailable(
        f"{_TLS_FAILED}does this server speak TLS on this port (else use redis://), and does it "
        f"require a client certificate ({_CLIENT_CERTIFICATE})?",
        when=lambda error, settings: settings.tls and TLS_HANDSHAKE(error),
    ),
    unavailable(_dropped, when=CONNECTION_DROPPED),
    unavailable("cannot reach the server; check REDIS_URL and that the server is up"),
]
_TIMED_OUT = [
    unavailable(
        lambda settings: _SLOW.format(settings.operation_timeout, _PLAIN_PORT),
        when=lambda error, settings: settings.tls and "connecting" in str(error).lower(),
    ),
    unavailable(lambda settings: _SLOW.format(settings.operation_timeout, "")),
]
_CREDENTIALS = auth(
    "the server refused the credentials; check REDIS_USERNAME and REDIS_PASSWORD, or the user "
    "name and password in REDIS_URL"
)
_CLUSTER = [
    config(
        "ABE_REDIS_CLUSTER",
        "it is no, but REDIS_URL points at a Redis Cluster node: set it to auto or yes",
        when=lambda error, settings: settings.cluster == "no",
    ),
    unavailable(
        "the Redis Cluster is failing over or moving slots, or a slot has no primary; abe "
        "retries, and it passes once the cluster settles (CLUSTER INFO says cluster_state:ok)"
    ),
]
_ANYTHING = unavailable("")  # any other: the server's own words say it
_RULES: dict[type[BaseException], ErrorRule | list[ErrorRule]] = {
    redis_errors.AuthenticationError: _CREDENTIALS,
    redis_errors.AuthenticationWrongNumberOfArgsError: _CREDENTIALS,
    **dict.fromkeys(_classes("AuthorizationError", "ExternalAuthProviderError"), _CREDENTIALS),
    redis_errors.NoPermissionError: auth(
        "the user may not do this; grant it what abe needs on these keys and their delayed-nack "
        "sets: ACL SETUSER <user> +@stream +@sortedset +@transaction +@connection +type "
        "~<key pattern> ~abe:{<key pattern>"
    ),
    # AskError: MovedError too
    **dict.fromkeys(_classes("RedisClusterException", "ClusterError", "AskError"), _CLUSTER),
    **dict.fromkeys(_classes("ClusterCrossSlotError", "TryAgainError"), _CLUSTER),
    redis_errors.MaxConnectionsError: unavailable(_EXHAUSTED),
    redis_errors.BusyLoadingError: unavailable(
        "the server is loading its data set after a restart; it answers again once loaded"
    ),
    # asyncio.TimeoutError is the builtin TimeoutError from Python 3.11 on, socket.timeout too
    **dict.fromkeys((redis_errors.TimeoutError, asyncio.TimeoutError, TimeoutError), _TIMED_OUT),
    redis_errors.ConnectionError: [  # redis-py 5.x's pool says "Too many connections"
        unavailable(_EXHAUSTED, when=lambda error: str(error) == "Too many connections"),
        *_UNREACHABLE,
    ],
    OSError: _UNREACHABLE,
    redis_errors.InvalidResponse: unavailable(
        lambda settings: (
            "the reply is not the Redis protocol; is REDIS_URL the address of a "
            f"Redis server{'' if settings.tls else ' (for a TLS port, use rediss://)'}?"
        )
    ),
    redis_errors.ReadOnlyError: unavailable(
        "the server is a read-only replica; point REDIS_URL at the primary"
    ),
    redis_errors.OutOfMemoryError: unavailable(
        "the server is out of memory; consume the backlog, raise maxmemory, or set "
        "ABE_REDIS_MAXLEN to trim streams"
    ),
    redis_errors.DataError: payload("redis-py refused the data to send"),
    redis_errors.ResponseError: [
        invalid_key(
            "a key holds a Redis value that is not a stream; use another key",
            when=lambda error: str(error).startswith("WRONGTYPE"),
        ),
        unavailable(
            "the server does not know a command abe needs; abe-mq-redis needs Redis 6.2 or later",
            when=lambda error: "unknown command" in str(error).lower(),
        ),
        unavailable("the server refused a command"),
    ],
    redis_errors.RedisError: _ANYTHING,
    **dict.fromkeys(_classes("ChildDeadlockedError", "IncorrectPolicyType"), _ANYTHING),
}
ERRORS = ErrorMap("redis", _RULES)
"""The one table; some hints read the backend's settings (its timeout, whether it uses TLS)."""
