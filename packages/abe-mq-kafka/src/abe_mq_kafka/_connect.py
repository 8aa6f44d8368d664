"""Why an aiokafka client could not start, when aiokafka itself only says "Unable to bootstrap".

aiokafka's bootstrap catches whatever stopped each connection (a refused SASL login, a
TLS handshake that failed), logs it, and raises `KafkaConnectionError("Unable to
bootstrap")` with no cause. After such a failure, and only then, `diagnose()` opens
fresh connections to the bootstrap servers, first without SASL and then with it, to
tell a broker that is away from a TLS mismatch and from a refused login.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    UnsupportedSaslMechanismError,
)

from abe.backends.message_queue.base.timeouts import bounded
from abe.errors import AuthenticationError, BackendUnavailableError
from abe_mq_kafka._errors import AUTH, category_of, describe, is_scram_rejection
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["diagnose", "tls_hint"]

_PROBE_TIMEOUT = 5.0
"""Longest one diagnostic connection may take (less when ABE_KAFKA_REQUEST_TIMEOUT is lower)."""
_SASL_VARIABLES = "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"


async def diagnose(settings: KafkaSettings) -> Exception | None:
    """The abe error saying why no client could bootstrap, or None when no cause shows.

    Each error's `__cause__` is the exception that gave the reason away; none holds a
    secret. Only for SSL and SASL protocols: with PLAINTEXT there is nothing to tell.
    """
    tls = settings.security_protocol.endswith("SSL")
    sasl = settings.security_protocol.startswith("SASL_")
    if not (tls or sasl):
        return None
    limit = min(settings.request_timeout, _PROBE_TIMEOUT)
    options = settings.connection_options()
    transport: dict[str, Any] = {
        "client_id": options["client_id"],
        "request_timeout_ms": int(limit * 1000),
        "ssl_context": options.get("ssl_context"),
        "security_protocol": "SSL" if tls else "PLAINTEXT",
    }
    for server in settings.bootstrap_servers:
        host, port = _split(server)
        try:
            connection = await bounded(create_conn(host, port, **transport), limit)
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            if tls and await _reachable(host, port, limit):
                return _tls_failed(settings, server, exc)
            continue  # this broker is away; another may answer
        connection.close()
        if not sasl:
            return None
        login = {
            **transport,
            "security_protocol": settings.security_protocol,
            "sasl_mechanism": options["sasl_mechanism"],
            "sasl_plain_username": options["sasl_plain_username"],
            "sasl_plain_password": options["sasl_plain_password"],
        }
        try:
            connection = await bounded(create_conn(host, port, **login), limit)
        except asyncio.TimeoutError:
            return None  # slow, not refused
        except (OSError, KafkaError, KeyError, ValueError) as exc:
            return _login_refused(settings, server, exc)
        connection.close()
        return None  # the login works now: the failure was passing
    return None


def tls_hint(settings: KafkaSettings) -> str:
    """What to check when a connection with TLS hangs: a plaintext listener never answers."""
    return (
        f"with KAFKA_SECURITY_PROTOCOL={settings.security_protocol}, a listener that does not "
        f"speak TLS never completes the handshake: check that KAFKA_BOOTSTRAP_SERVERS names "
        f"the brokers' TLS listener (or use "
        f"{'SASL_PLAINTEXT' if settings.security_protocol == 'SASL_SSL' else 'PLAINTEXT'} "
        f"for a plaintext one), and that the brokers are up"
    )


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


async def _reachable(host: str, port: int, limit: float) -> bool:
    """Whether a plain TCP connection to host:port opens (a TLS failure, not a broker away)."""
    try:
        _, writer = await bounded(asyncio.open_connection(host, port), limit)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def _tls_failed(settings: KafkaSettings, server: str, error: BaseException) -> Exception:
    if isinstance(error, asyncio.TimeoutError):
        what = f"no TLS session within {min(settings.request_timeout, _PROBE_TIMEOUT):g}s"
    else:
        what = f"the TLS handshake failed ({type(error).__name__}: {describe(error)})"
    if isinstance(error, ssl.SSLCertVerificationError):
        fix = (
            "set KAFKA_SSL_CAFILE to the CA that signed the brokers' certificates, or check "
            "that KAFKA_BOOTSTRAP_SERVERS names the host the certificate is for"
        )
    else:
        fix = tls_hint(settings)
    failed = BackendUnavailableError(
        f"kafka: {server} accepts connections but {what}; no credentials were sent; {fix}"
    )
    failed.__cause__ = error
    return failed


def _login_refused(settings: KafkaSettings, server: str, error: BaseException) -> Exception:
    mechanism = settings.sasl_mechanism
    if isinstance(error, UnsupportedSaslMechanismError):
        why = f"it does not offer SASL {mechanism}"
        if "Enabled mechanisms" in str(error):
            why += f" ({str(error).rsplit('. ', 1)[-1]})"
    elif is_scram_rejection(error):
        why = f"it refused the {mechanism} credentials"
    elif isinstance(error, KafkaConnectionError):
        why = f"it closed the connection during the SASL {mechanism} login"
    elif category_of(error) == AUTH:
        why = f"it refused the {mechanism} login ({type(error).__name__}: {describe(error)})"
    else:
        failed = BackendUnavailableError(
            f"kafka: the SASL {mechanism} login at {server} failed "
            f"({type(error).__name__}: {describe(error)}); check {_SASL_VARIABLES}"
        )
        failed.__cause__ = error
        return failed
    refused = AuthenticationError(
        f"kafka: the broker at {server} refused the login: {why}; check {_SASL_VARIABLES}"
    )
    refused.__cause__ = error
    return refused
