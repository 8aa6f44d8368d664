"""redis-py's exceptions and the abe errors they become, with what to do about each.

Two hints depend on the settings (the operation timeout, and whether the URL asks for
TLS), so each backend builds its table with `error_map()`; `ERRORS` is the table of the
default settings. Messages show the server as `RedisSettings.address`, never a secret.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable

from redis import exceptions as redis_errors

from abe.errors import InvalidKeyError
from abe.provider import ErrorMap, ErrorRule, auth, config, invalid_key, payload, unavailable

__all__ = ["ERRORS", "error_map", "reserved_name_error", "wrong_type_error"]


def _chain(error: BaseException) -> list[BaseException]:
    """The error and up to four of its causes (TLS failures arrive wrapped)."""
    chain = [error]
    while len(chain) < 5 and (cause := chain[-1].__cause__ or chain[-1].__context__):
        chain.append(cause)
    return chain


def _says(pattern: str) -> Callable[[BaseException], bool]:
    """Whether the error or one of its causes says `pattern` (a case-blind regex)."""
    compiled = re.compile(pattern, re.IGNORECASE)
    return lambda error: any(compiled.search(str(item)) for item in _chain(error))


def _host_mismatch(error: BaseException) -> bool:
    codes = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
    chain = _chain(error)
    return _says("hostname mismatch|ip address mismatch")(error) or any(
        getattr(item, "verify_code", None) in codes for item in chain
    )


def _untrusted(error: BaseException) -> bool:
    chain = _chain(error)
    verify = any(isinstance(item, ssl.SSLCertVerificationError) for item in chain)
    return verify or _says("CERTIFICATE_VERIFY_FAILED")(error)


def _tls_failed(error: BaseException) -> bool:
    return any(isinstance(item, ssl.SSLError) or "SSL" in str(item) for item in _chain(error))


_dropped = _says("closed by server|reset by peer|connection lost|broken pipe")
"""The server hung up: on every new connection, a hint of a TLS mismatch."""


def _unreachable(tls: bool) -> list[ErrorRule]:
    """Why a connection failed, most specific first; the TLS mismatches each say so."""
    handshake = "the TLS handshake failed: "
    rules = [
        unavailable(
            f"{handshake}the server's certificate is valid, but not for the host name (or "
            "address) in REDIS_URL, so it may not be this server. Write in REDIS_URL a name the "
            "certificate lists, or have the certificate issued for this name; REDIS_TLS_CA_FILE "
            "only chooses which CA is trusted and cannot fix this",
            when=_host_mismatch,
        ),
        unavailable(
            f"{handshake}the server's certificate is not signed by a trusted CA (or is not "
            "valid now). Set REDIS_TLS_CA_FILE to the CA that signed it",
            when=_untrusted,
        ),
    ]
    if tls:
        rules += [
            unavailable(
                f"{handshake}does this server speak TLS on this port (else use redis://), and "
                "does it require a client certificate (REDIS_TLS_CERT_FILE and "
                "REDIS_TLS_KEY_FILE)?",
                when=_tls_failed,
            ),
            unavailable(
                "if this happens on every connection, the server may refuse this client's TLS "
                "certificate, or want one: set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE",
                when=_dropped,
            ),
        ]
    else:
        rules.append(
            unavailable(
                "if this happens on every connection, the server may expect TLS: use rediss://",
                when=_dropped,
            )
        )
    return [*rules, unavailable("cannot reach the server; check REDIS_URL and that it is up")]


def _optional(*names: str) -> list[type[BaseException]]:
    """The named redis-py exception classes this version has (5.3 lacks some of 8.x's)."""
    found = (getattr(redis_errors, name, None) for name in names)
    return [klass for klass in found if isinstance(klass, type)]


def error_map(*, tls: bool, timeout: float) -> ErrorMap:
    """The table for a backend whose URL does (or not) use TLS, with this operation timeout."""
    slow = (
        f"the server did not answer within {timeout:g}s; check that it is up and reachable"
        "{}, or raise ABE_MQ_OPERATION_TIMEOUT if it is only slow"
    )
    timed_out = [unavailable(slow.format(""))]
    if tls:
        handshake = (
            " (with rediss://, a server that does not speak TLS on this port never answers the "
            "handshake: use redis:// for a plain port)"
        )
        timed_out.insert(0, unavailable(slow.format(handshake), when=_says("connecting")))
    credentials = auth(
        "the server refused the credentials; check REDIS_USERNAME and REDIS_PASSWORD, or the "
        "user name and password in REDIS_URL"
    )
    cluster = config(
        "REDIS_URL",
        "it points at a Redis Cluster node; abe-mq-redis needs a standalone Redis server or a "
        "primary",
    )
    pool = (
        "every pooled connection is in use; raise ABE_REDIS_POOL_SIZE or publish from fewer "
        "tasks at once"
    )
    exhausted = unavailable(pool, when=lambda error: str(error) == "Too many connections")
    unknown = unavailable("")
    rules: dict[type[BaseException], ErrorRule | list[ErrorRule]] = {
        **dict.fromkeys(_optional("AuthorizationError", "ExternalAuthProviderError"), credentials),
        **dict.fromkeys(_optional("IncorrectPolicyType"), unknown),
        redis_errors.AuthenticationError: credentials,
        redis_errors.AuthenticationWrongNumberOfArgsError: credentials,
        redis_errors.NoPermissionError: auth(
            "the user may not do this; grant it what abe needs on these keys and their "
            "delayed-nack sets: ACL SETUSER <user> +@stream +@sortedset +@transaction "
            "+@connection +type ~<key pattern> ~abe:{<key pattern>"
        ),
        redis_errors.RedisClusterException: cluster,  # SlotNotCovered, CrossSlotTransaction...
        redis_errors.ClusterError: cluster,
        redis_errors.AskError: cluster,  # MovedError too
        redis_errors.ClusterCrossSlotError: cluster,
        redis_errors.TryAgainError: cluster,
        redis_errors.MaxConnectionsError: unavailable(pool),
        redis_errors.BusyLoadingError: unavailable(
            "the server is loading its data set after a restart; it answers again once loaded"
        ),
        redis_errors.TimeoutError: timed_out,
        TimeoutError: timed_out,  # socket.timeout, and asyncio.TimeoutError from 3.11 on
        asyncio.TimeoutError: timed_out,
        redis_errors.ConnectionError: [exhausted, *_unreachable(tls)],  # 5.x: "Too many..."
        OSError: _unreachable(tls),
        redis_errors.InvalidResponse: unavailable(
            "the reply is not the Redis protocol; is REDIS_URL the address of a Redis server"
            f"{'' if tls else ' (for a TLS port, use rediss://)'}?"
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
                "the server does not know a command abe needs; abe-mq-redis needs Redis 6.2 "
                "or later",
                when=_says("unknown command"),
            ),
            unavailable("the server refused a command"),
        ],
        redis_errors.RedisError: unknown,
        redis_errors.ChildDeadlockedError: unknown,
    }
    return ErrorMap("redis", rules)


ERRORS = error_map(tls=False, timeout=10.0)
"""The table of a backend with the default settings (a plain URL, a 10 s timeout)."""


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
