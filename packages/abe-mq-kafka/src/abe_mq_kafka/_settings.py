"""KafkaSettings and the variables `from_env()` reads: every one checked, one error for all."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from abe.backends.message_queue.base.settings import BackendSettings
from abe.errors import ConfigurationError
from abe.settings import COMMON_VARIABLES, Environment, Secret, Variable

__all__ = ["KafkaSettings"]

BOOTSTRAP_SERVERS = Variable(
    "KAFKA_BOOTSTRAP_SERVERS",
    "localhost:9092",
    "Comma-separated host:port of one or more brokers, e.g. kafka-1:9092,kafka-2:9092.",
)
SECURITY_PROTOCOL = Variable(
    "KAFKA_SECURITY_PROTOCOL",
    "PLAINTEXT",
    "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
)
SASL_MECHANISM = Variable(
    "KAFKA_SASL_MECHANISM",
    "PLAIN",
    "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* security protocol).",
)
SASL_USERNAME = Variable("KAFKA_SASL_USERNAME", None, "SASL user name (SASL_* protocols).")
SASL_PASSWORD = Variable(
    "KAFKA_SASL_PASSWORD", None, "SASL password (SASL_* protocols); never shown.", secret=True
)
SSL_CAFILE = Variable(
    "KAFKA_SSL_CAFILE",
    None,
    "PEM file of the CA that signed the brokers' certificates (default: the system's CAs).",
)
SSL_CERTFILE = Variable(
    "KAFKA_SSL_CERTFILE", None, "PEM client certificate, for brokers that require one (mTLS)."
)
SSL_KEYFILE = Variable("KAFKA_SSL_KEYFILE", None, "PEM private key of KAFKA_SSL_CERTFILE.")
SSL_KEY_PASSWORD = Variable(
    "KAFKA_SSL_KEY_PASSWORD", None, "Password of KAFKA_SSL_KEYFILE; never shown.", secret=True
)
SSL_CHECK_HOSTNAME = Variable(
    "KAFKA_SSL_CHECK_HOSTNAME", "true", "Check that the broker's certificate names its host."
)
CLIENT_ID = Variable("KAFKA_CLIENT_ID", "abe", "Client id the brokers see in logs and quotas.")
PARTITIONS = Variable(
    "ABE_KAFKA_PARTITIONS",
    "6",
    "Partitions of each topic abe creates: the most members of a group that share one key.",
)
REPLICATION_FACTOR = Variable(
    "ABE_KAFKA_REPLICATION_FACTOR",
    "1",
    "Replicas of each topic abe creates (use 3 on a production cluster).",
)
IDEMPOTENT = Variable(
    "ABE_KAFKA_IDEMPOTENT",
    "true",
    "Idempotent producer (no duplicates from producer retries); turn off for brokers "
    "without InitProducerId support.",
)
SESSION_TIMEOUT = Variable(
    "ABE_KAFKA_SESSION_TIMEOUT",
    "10",
    "Seconds without a heartbeat before the group drops a member; joins take a part of it.",
)
REQUEST_TIMEOUT = Variable(
    "ABE_KAFKA_REQUEST_TIMEOUT", "30", "Seconds the client waits for any one broker response."
)
COMMIT_INTERVAL = Variable(
    "ABE_KAFKA_COMMIT_INTERVAL",
    "0.1",
    "Seconds between offset commits of finished messages (0: commit every acknowledgement); "
    "closing and rebalances always commit first.",
)
MAX_PAYLOAD_BYTES = Variable(
    "ABE_KAFKA_MAX_PAYLOAD_BYTES",
    "1000000",
    "Largest JSON body accepted; keep it under the broker's message.max.bytes.",
)

VARIABLES: tuple[Variable, ...] = (
    BOOTSTRAP_SERVERS,
    SECURITY_PROTOCOL,
    SASL_MECHANISM,
    SASL_USERNAME,
    SASL_PASSWORD,
    SSL_CAFILE,
    SSL_CERTFILE,
    SSL_KEYFILE,
    SSL_KEY_PASSWORD,
    SSL_CHECK_HOSTNAME,
    CLIENT_ID,
    PARTITIONS,
    REPLICATION_FACTOR,
    IDEMPOTENT,
    SESSION_TIMEOUT,
    REQUEST_TIMEOUT,
    COMMIT_INTERVAL,
    MAX_PAYLOAD_BYTES,
    *COMMON_VARIABLES,
)
"""Every variable `KafkaSettings.from_env()` reads, in the order the README lists them."""

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
_OPTION_MARKS = ("?", "=", "&", ";", "#")
"""Characters of URL options (`?password=...`): a value with them is not echoed."""
_RECORD_OVERHEAD = 64 * 1024
"""Room above the largest body for headers and batch framing in one produce request."""


def parse_bootstrap(text: str) -> tuple[str, ...]:
    """`host:port,host:port` as a tuple, or ValueError saying which part is wrong.

    A value with user info or options may hold a password (in any of its comma-separated
    parts), so no part of it is echoed; the error says where credentials go instead.
    """
    if "@" in text:
        raise ValueError(
            "holds credentials (user:password@), which do not belong in it: list only "
            "host:port (e.g. kafka-1:9092) and set KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD with KAFKA_SECURITY_PROTOCOL=SASL_SSL"
        )
    if any(mark in text for mark in _OPTION_MARKS):
        raise ValueError(
            "must list host:port only, without a scheme, path or options (e.g. kafka-1:9092); "
            "its value is not shown as it may hold a secret"
        )
    servers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not servers:
        raise ValueError("names no host:port")
    for server in servers:
        match = _HOST_PORT.match(server)
        if match is None:
            raise ValueError(f"{server!r} is not host:port (no scheme, e.g. kafka-1:9092)")
        if not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{server!r} has a port outside 1-65535")
    return servers


def _no_password() -> str:
    """The password of a key given none: empty, so an encrypted key fails instead of prompting."""
    return ""


@dataclass(frozen=True, kw_only=True)
class KafkaSettings(BackendSettings):
    """Where the brokers are, how to authenticate, and how abe creates topics and joins groups."""

    bootstrap_servers: tuple[str, ...] = ("localhost:9092",)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: Secret | None = None
    ssl_check_hostname: bool = True
    client_id: str = "abe"
    partitions: int = 6
    replication_factor: int = 1
    idempotent: bool = True
    session_timeout: float = 10.0
    request_timeout: float = 30.0
    commit_interval: float = 0.1
    max_payload_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        super().__post_init__()
        servers: object = self.bootstrap_servers
        if not isinstance(servers, str):  # hand-built settings may give a string for short
            servers = ",".join(servers)  # type: ignore[arg-type]
        try:
            parsed = parse_bootstrap(servers)
        except ValueError as exc:
            raise ValueError(f"bootstrap_servers {exc}") from None
        object.__setattr__(self, "bootstrap_servers", parsed)
        if self.security_protocol not in PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {', '.join(PROTOCOLS)}")
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {', '.join(MECHANISMS)}")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")
        if self.session_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("session_timeout and request_timeout must be positive")
        if not 0 <= self.commit_interval <= 60:
            raise ValueError("commit_interval must be from 0 to 60 seconds")

    @classmethod
    def from_env(cls) -> KafkaSettings:
        """Read KAFKA_*, ABE_KAFKA_* and the common ABE_MQ_* variables; one error names all."""
        env = Environment()
        common = cls.read_common(env)
        values: dict[str, Any] = {}
        text = env.string(BOOTSTRAP_SERVERS)
        if text is not None:
            try:
                values["bootstrap_servers"] = parse_bootstrap(text)
            except ValueError as exc:  # names the wrong part; the value may hold a password
                env.problem(BOOTSTRAP_SERVERS, str(exc))
        protocol = env.choice(SECURITY_PROTOCOL, PROTOCOLS) or "PLAINTEXT"
        mechanism = env.choice(SASL_MECHANISM, MECHANISMS) or "PLAIN"
        username = env.string(SASL_USERNAME)
        password = env.secret(SASL_PASSWORD)
        if protocol.startswith("SASL_"):
            if username is None:
                env.problem(SASL_USERNAME, f"is required with KAFKA_SECURITY_PROTOCOL={protocol}")
            if password is None:
                env.problem(SASL_PASSWORD, f"is required with KAFKA_SECURITY_PROTOCOL={protocol}")
        else:
            for variable in (SASL_USERNAME, SASL_PASSWORD):
                if env.is_set(variable):
                    env.problem(
                        variable,
                        f"is set but KAFKA_SECURITY_PROTOCOL is {protocol}; set it to "
                        f"SASL_SSL (or SASL_PLAINTEXT) to authenticate",
                    )
        cafile = env.path(SSL_CAFILE)
        certfile = env.path(SSL_CERTFILE)
        keyfile = env.path(SSL_KEYFILE)
        key_password = env.secret(SSL_KEY_PASSWORD)
        check_hostname = env.boolean(SSL_CHECK_HOSTNAME)
        if not protocol.endswith("SSL"):
            for variable in (SSL_CAFILE, SSL_CERTFILE, SSL_KEYFILE, SSL_KEY_PASSWORD):
                if env.is_set(variable):
                    env.problem(
                        variable,
                        f"is set but KAFKA_SECURITY_PROTOCOL is {protocol}; set it to SSL "
                        f"(or SASL_SSL) to use TLS",
                    )
        if env.is_set(SSL_CERTFILE) != env.is_set(SSL_KEYFILE):
            missing = SSL_KEYFILE if env.is_set(SSL_CERTFILE) else SSL_CERTFILE
            env.problem(missing, "is required when the other half of the client pair is set")
        client_id = env.string(CLIENT_ID) or "abe"
        partitions = env.integer(PARTITIONS, minimum=1, maximum=10_000)
        replication = env.integer(REPLICATION_FACTOR, minimum=1, maximum=100)
        idempotent = env.boolean(IDEMPOTENT)
        session = env.seconds(SESSION_TIMEOUT, minimum=0.3, maximum=3_600)
        request = env.seconds(REQUEST_TIMEOUT, minimum=0.5, maximum=3_600)
        commit_interval = env.seconds(COMMIT_INTERVAL, minimum=0, maximum=60)
        max_payload = env.integer(MAX_PAYLOAD_BYTES, minimum=1, maximum=1 << 30)
        env.check("kafka")
        return cls(
            **common,
            **values,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=username if protocol.startswith("SASL_") else None,
            sasl_password=password if protocol.startswith("SASL_") else None,
            ssl_cafile=cafile,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            ssl_key_password=key_password,
            ssl_check_hostname=True if check_hostname is None else check_hostname,
            client_id=client_id,
            partitions=partitions or 6,
            replication_factor=replication or 1,
            idempotent=True if idempotent is None else idempotent,
            session_timeout=session or 10.0,
            request_timeout=request or 30.0,
            commit_interval=0.1 if commit_interval is None else commit_interval,
            max_payload_bytes=max_payload or 1_000_000,
        )

    # ---- what the client library is given ---------------------------------------------------

    def secrets(self) -> tuple[str, ...]:
        """The secret values the client library is given, to keep out of its logs."""
        return tuple(
            secret.reveal()
            for secret in (self.sasl_password, self.ssl_key_password)
            if secret is not None and secret.reveal()
        )

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client takes: brokers, identity, security, timeouts."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "retry_backoff_ms": 100,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.reveal() if self.sasl_password is not None else None
            )
        return options

    def ssl_context(self) -> Any:
        """The TLS context for SSL and SASL_SSL: the CA file (or system CAs), the client pair.

        Files that do not load (a wrong key password, a key that does not match its
        certificate) raise ConfigurationError naming the variables, never the password.
        """
        try:
            context = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
                # Never None: OpenSSL would prompt on the terminal for an encrypted key.
                password=self.ssl_key_password.reveal() if self.ssl_key_password else _no_password,
            )
        except (ssl.SSLError, OSError) as exc:
            if self.ssl_certfile is None:
                problems = {"KAFKA_SSL_CAFILE": f"does not load as PEM certificates ({exc})"}
            else:
                problems = {
                    "KAFKA_SSL_KEYFILE": (
                        f"does not load with KAFKA_SSL_CERTFILE ({exc}): check that the key "
                        f"matches the certificate and that KAFKA_SSL_KEY_PASSWORD is its "
                        f"password (set it only for an encrypted key)"
                    )
                }
            raise ConfigurationError("kafka", problems) from None
        context.check_hostname = self.ssl_check_hostname
        return context

    def producer_options(self) -> dict[str, Any]:
        """AIOKafkaProducer arguments: acks from all in-sync replicas, idempotent by default."""
        return {
            **self.connection_options(),
            "acks": "all",
            "enable_idempotence": self.idempotent,
            "linger_ms": 0,
            "max_batch_size": 512 * 1024,
            "max_request_size": self.max_payload_bytes + _RECORD_OVERHEAD,
        }

    def consumer_options(self) -> dict[str, Any]:
        """AIOKafkaConsumer arguments: manual commits, earliest offset, bounded read-ahead."""
        session_ms = int(self.session_timeout * 1000)
        partition_bytes = self.max_payload_bytes + _RECORD_OVERHEAD
        return {
            **self.connection_options(),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": max(50, min(3000, session_ms // 3)),
            "rebalance_timeout_ms": int(self.rebalance_timeout * 1000),
            # abe decides when a member that stopped reading leaves (see the receiver).
            "max_poll_interval_ms": 24 * 3600 * 1000,
            "max_partition_fetch_bytes": partition_bytes,
            "fetch_max_bytes": max(partition_bytes, 4 * 1024 * 1024),
            "fetch_max_wait_ms": 100,
        }

    @property
    def rebalance_timeout(self) -> float:
        """How long the group waits for members to settle their messages before a rebalance."""
        return min(300.0, self.session_timeout + 3 * self.redelivery_timeout)
