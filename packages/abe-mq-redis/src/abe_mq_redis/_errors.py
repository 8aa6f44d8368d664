"""The one place redis-py's exceptions become abe's (STYLE.md 6).

Every class in `redis.exceptions` maps to the most specific `abe.errors` class; the
unit tests walk them all. Messages name the cause and the variable to change, and
never hold a secret: they show the server as `RedisSettings.address`, which has none.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl

from redis import exceptions as redis_errors

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = ["reserved_name_error", "translate_error", "wrong_type_error"]


def _classes(*names: str) -> tuple[type[Exception], ...]:
    """The named redis-py exception classes this version has (older ones lack some)."""
    found = (getattr(redis_errors, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type) and issubclass(cls, Exception))


_CLUSTER_ERRORS = _classes(
    "ClusterError",
    "AskError",  # MovedError too
    "ClusterCrossSlotError",
    "TryAgainError",
    "RedisClusterException",  # SlotNotCovered, CrossSlotTransaction, ...
)
_AUTH_ERRORS = _classes(
    "AuthenticationError",
    "AuthenticationWrongNumberOfArgsError",
    "AuthorizationError",
    "ExternalAuthProviderError",
)
_POOL_EXHAUSTED = _classes("MaxConnectionsError")


def wrong_type_error(key: str, found: str) -> InvalidKeyError:
    """The error for a key that exists in Redis with a type other than stream."""
    what = f"a Redis {found}" if found and found != "none" else "a value of another type"
    return InvalidKeyError(
        f"key {key!r} holds {what}, not a stream, so abe cannot publish to it or read it; "
        f"use another key, or remove that {found if found != 'none' else 'value'} "
        f"if nothing needs it"
    )


def reserved_name_error(name: str, found: str, holds: str) -> InvalidKeyError:
    """The error for a name abe keeps `holds` in, taken by a value of type `found`."""
    return InvalidKeyError(
        f"key {name!r} holds a Redis {found}, but abe keeps {holds} under that name; "
        f"something other than abe wrote it there: remove it (DEL {name}) if nothing needs it"
    )


def translate_error(error: Exception, where: str, *, tls: bool, timeout: float) -> Exception:
    """The abe error for `error`, raised while talking to the Redis at `where` (no secret).

    `tls` says whether the URL asked for TLS (for hints about mismatches) and `timeout`
    is the operation timeout, for messages about calls that took too long.
    """
    if isinstance(error, AbeError):
        return error
    message = _text(error)
    if isinstance(error, _AUTH_ERRORS):
        return AuthenticationError(
            f"redis at {where} refused the credentials ({message}); check REDIS_USERNAME "
            f"and REDIS_PASSWORD, or the user name and password in REDIS_URL"
        )
    if isinstance(error, redis_errors.NoPermissionError):
        return AuthenticationError(
            f"redis at {where}: the user may not do this ({message}); grant it what abe "
            f"needs on these keys and its delayed-nack sets: ACL SETUSER <user> +@stream "
            f"+@sortedset +@transaction +@connection +type ~<key pattern> ~abe:{{<key pattern>"
        )
    if isinstance(error, _CLUSTER_ERRORS):
        return ConfigurationError(
            "redis",
            {
                "REDIS_URL": f"points at a Redis Cluster node ({message}); abe-mq-redis needs "
                f"a standalone Redis server or a primary (got {where!r})"
            },
        )
    if isinstance(error, _POOL_EXHAUSTED) or str(error) == "Too many connections":
        return BackendUnavailableError(
            f"redis at {where}: every pooled connection is in use ({message}); raise "
            f"ABE_REDIS_POOL_SIZE or publish from fewer tasks at once"
        )
    if isinstance(error, redis_errors.BusyLoadingError):
        return BackendUnavailableError(
            f"redis at {where} is loading its data set after a restart ({message}); "
            f"it answers again once loaded"
        )
    if isinstance(error, (redis_errors.TimeoutError, asyncio.TimeoutError, socket.timeout)):
        handshake = (
            " (with rediss://, a server that does not speak TLS on this port never answers the "
            "handshake: use redis:// for a plain port)"
            if tls and "connecting" in message.lower()
            else ""
        )
        return BackendUnavailableError(
            f"redis at {where} did not answer within {timeout:g}s ({message}); check that it "
            f"is up and reachable{handshake}, or raise ABE_MQ_OPERATION_TIMEOUT if it is only "
            f"slow"
        )
    if isinstance(error, (redis_errors.ConnectionError, OSError)):
        return BackendUnavailableError(
            f"cannot reach redis at {where} ({message}){_hint(error, tls)}"
        )
    if isinstance(error, redis_errors.InvalidResponse):
        return BackendUnavailableError(
            f"redis at {where} sent a reply that is not the Redis protocol ({message}); is "
            f"REDIS_URL the address of a Redis server{_tls_hint(tls)}?"
        )
    if isinstance(error, redis_errors.ReadOnlyError):
        return BackendUnavailableError(
            f"redis at {where} is a read-only replica ({message}); point REDIS_URL at the primary"
        )
    if isinstance(error, redis_errors.OutOfMemoryError):
        return BackendUnavailableError(
            f"redis at {where} is out of memory ({message}); consume the backlog, raise "
            f"maxmemory, or set ABE_REDIS_MAXLEN to trim streams"
        )
    if isinstance(error, redis_errors.DataError):
        return PayloadError(f"redis-py refused the data to send: {message}")
    if isinstance(error, redis_errors.ResponseError):
        if message.startswith("WRONGTYPE"):
            return InvalidKeyError(
                f"a key holds a Redis value that is not a stream ({message}); use another key"
            )
        if "unknown command" in message.lower():
            return BackendUnavailableError(
                f"redis at {where} does not know a command abe needs ({message}); abe-mq-redis "
                f"needs Redis 6.2 or later"
            )
        return BackendUnavailableError(f"redis at {where} refused a command: {message}")
    if isinstance(error, (redis_errors.RedisError, redis_errors.ChildDeadlockedError)):
        return BackendUnavailableError(f"redis at {where}: {type(error).__name__}: {message}")
    if type(error).__module__.split(".")[0] == "redis":  # IncorrectPolicyType and the like
        return BackendUnavailableError(f"redis at {where}: {type(error).__name__}: {message}")
    return error


_HOST_MISMATCH = re.compile(r"(?i)hostname mismatch|ip address mismatch")
"""How OpenSSL says that the certificate is for another name."""
_HOST_MISMATCH_CODES = (62, 64)
"""X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH."""

_DROPPED = ("closed by server", "reset by peer", "connection lost", "broken pipe")
"""Words of errors where the server hung up: a hint of a TLS mismatch on a new connection."""


def _text(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def _hint(error: BaseException, tls: bool) -> str:
    """A pointer to the likely fix when the failure looks like a TLS mismatch."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = " ".join(_text(item) for item in chain)
    if any(_HOST_MISMATCH.search(_text(item)) for item in chain) or any(
        getattr(item, "verify_code", None) in _HOST_MISMATCH_CODES for item in chain
    ):
        return (
            "; the TLS handshake failed: the server's certificate is valid, but not for the "
            "host name (or address) in REDIS_URL, so it may not be this server. Write in "
            "REDIS_URL a name the certificate lists, or have the certificate issued for this "
            "name; REDIS_TLS_CA_FILE only chooses which CA is trusted and cannot fix this"
        )
    if any(isinstance(item, ssl.SSLCertVerificationError) for item in chain) or (
        "CERTIFICATE_VERIFY_FAILED" in texts
    ):
        return (
            "; the TLS handshake failed: the server's certificate is not signed by a trusted "
            "CA (or is not valid now). Set REDIS_TLS_CA_FILE to the CA that signed it"
        )
    lowered = texts.lower()
    dropped = any(word in lowered for word in _DROPPED)
    if tls and (any(isinstance(item, ssl.SSLError) for item in chain) or "SSL" in texts):
        return (
            "; the TLS handshake failed: does this server speak TLS on this port (else use "
            "redis://), and does it require a client certificate (REDIS_TLS_CERT_FILE and "
            "REDIS_TLS_KEY_FILE)?"
        )
    if tls and dropped:
        return (
            "; if this happens on every connection, the server may refuse this client's TLS "
            "certificate, or want one: set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
        )
    if dropped:
        return "; if this happens on every connection, the server may expect TLS: use rediss://"
    return ""


def _tls_hint(tls: bool) -> str:
    return "" if tls else " (for a TLS port, use rediss://)"
