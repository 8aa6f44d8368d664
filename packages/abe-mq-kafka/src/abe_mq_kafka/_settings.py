"""KafkaSettings: every variable abe-mq-kafka reads, declared once, and aiokafka's options."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from abe.errors import ConfigurationError
from abe.provider import BackendSettings, Secret, common_setting, setting

__all__ = ["KafkaSettings"]

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_RECORD_OVERHEAD = 64 * 1024  # room above the largest body for headers and batch framing


def parse_bootstrap(text: str) -> tuple[str, ...]:
    """`host:port,...` as a tuple; a value that may hold a password is never echoed ("(got")."""
    if "@" in text:
        raise ValueError(
            "must list host:port only (got credentials, user:password@, which are not shown): "
            "list host:port (e.g. kafka-1:9092) and set KAFKA_SASL_USERNAME and "
            "KAFKA_SASL_PASSWORD with KAFKA_SECURITY_PROTOCOL=SASL_SSL"
        )
    if any(mark in text for mark in "?=&;#"):
        raise ValueError(
            "must list host:port only, without a scheme, path or options (e.g. kafka-1:9092) "
            "(got options, not shown as they may hold a secret)"
        )
    servers = tuple(part.strip() for part in text.split(",") if part.strip())
    for server in servers or ("",):
        match = _HOST_PORT.match(server)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(
                f"must list host:port, ports 1-65535, e.g. kafka-1:9092 (got {server!r})"
            )
    return servers


@dataclass(frozen=True, kw_only=True)
class KafkaSettings(BackendSettings):
    """Where the brokers are, how to authenticate, and how abe creates topics and joins groups."""

    bootstrap_servers: tuple[str, ...] = setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        ("localhost:9092",),
        "Comma-separated host:port of one or more brokers, e.g. kafka-1:9092,kafka-2:9092.",
        parse=parse_bootstrap,
    )
    security_protocol: str = setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = setting(
        "KAFKA_SASL_MECHANISM",
        "PLAIN",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* security protocol).",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    sasl_username: str | None = setting(
        "KAFKA_SASL_USERNAME", None, "SASL user name (SASL_* protocols)."
    )
    sasl_password: Secret | None = setting(
        "KAFKA_SASL_PASSWORD", None, "SASL password (SASL_* protocols); never shown.", secret=True
    )
    ssl_cafile: Path | None = setting(
        "KAFKA_SSL_CAFILE",
        None,
        "PEM file of the CA that signed the brokers' certificates (default: the system's CAs).",
    )
    ssl_certfile: Path | None = setting(
        "KAFKA_SSL_CERTFILE",
        None,
        "PEM client certificate, for brokers that require one (mTLS).",
        pair="ssl_keyfile",
    )
    ssl_keyfile: Path | None = setting(
        "KAFKA_SSL_KEYFILE", None, "PEM private key of KAFKA_SSL_CERTFILE."
    )
    ssl_key_password: Secret | None = setting(
        "KAFKA_SSL_KEY_PASSWORD", None, "Password of KAFKA_SSL_KEYFILE; never shown.", secret=True
    )
    ssl_check_hostname: bool = setting(
        "KAFKA_SSL_CHECK_HOSTNAME", True, "Check that the broker's certificate names its host."
    )
    client_id: str = setting(
        "KAFKA_CLIENT_ID", "abe", "Client id the brokers see in logs and quotas."
    )
    prefetch: int = common_setting(
        "prefetch",
        500,
        "Kafka's own max.poll.records; aiokafka holds what it fetched either way, and "
        "partitions, not prefetch, share a key between members",
    )
    partitions: int = setting(
        "ABE_KAFKA_PARTITIONS",
        6,
        "Partitions of each topic abe creates: the most members of a group that share one key.",
        minimum=1,
        maximum=10_000,
    )
    replication_factor: int = setting(
        "ABE_KAFKA_REPLICATION_FACTOR",
        1,
        "Replicas of each topic abe creates (use 3 on a production cluster).",
        minimum=1,
        maximum=100,
    )
    min_insync_replicas: int | None = setting(
        "ABE_KAFKA_MIN_INSYNC_REPLICAS",
        None,
        "min.insync.replicas of each topic abe creates: replicas that must have a write before "
        "acks=all confirms it (use 2 with 3 replicas). Unset: the broker's default.",
        minimum=1,
        maximum=100,
    )
    idempotent: bool = setting(
        "ABE_KAFKA_IDEMPOTENT",
        True,
        "Idempotent producer (no duplicates from producer retries); turn off for brokers "
        "without InitProducerId support.",
    )
    session_timeout: float = setting(
        "ABE_KAFKA_SESSION_TIMEOUT",
        10.0,
        "Seconds without a heartbeat before the group drops a member; joins take a part of it.",
        minimum=0.3,
        maximum=3_600,
    )
    request_timeout: float = setting(
        "ABE_KAFKA_REQUEST_TIMEOUT",
        30.0,
        "Seconds the client waits for any one broker response.",
        minimum=0.5,
        maximum=3_600,
    )
    commit_interval: float = setting(
        "ABE_KAFKA_COMMIT_INTERVAL",
        0.1,
        "Seconds between offset commits of finished messages (0: commit every acknowledgement); "
        "closing and rebalances always commit first.",
        minimum=0,
        maximum=60,
    )
    fetch_max_wait: float = setting(
        "ABE_KAFKA_FETCH_MAX_WAIT",
        0.5,
        "Seconds a broker may hold a fetch open for records; a broker that needs longer to read "
        "a long partition answers empty, so raise it if members with lag receive nothing.",
        minimum=0.01,
        maximum=60,
    )
    heartbeat_interval: float | None = setting(
        "ABE_KAFKA_HEARTBEAT_INTERVAL",
        None,
        "Seconds between heartbeats (default: a third of ABE_KAFKA_SESSION_TIMEOUT, at most 3).",
        minimum=0.05,
        maximum=3_600,
    )
    rebalance_timeout: float | None = setting(
        "ABE_KAFKA_REBALANCE_TIMEOUT",
        None,
        "Seconds a rebalance waits for members to finish their messages and rejoin (default: "
        "the session timeout plus 3 redelivery timeouts, at most 300).",
        minimum=0.3,
        maximum=3_600,
    )
    group_instance_id: str | None = setting(
        "ABE_KAFKA_GROUP_INSTANCE_ID",
        None,
        "Static group membership: a name unique to this worker that survives its restarts (e.g. "
        "the pod name); a worker back within the session timeout keeps its partitions.",
    )
    max_payload_bytes: int = setting(
        "ABE_KAFKA_MAX_PAYLOAD_BYTES",
        1_000_000,
        "Largest JSON body accepted; keep it under the broker's message.max.bytes.",
        minimum=1,
        maximum=1 << 30,
    )

    backend_name: ClassVar[str] = "kafka"

    def __post_init__(self) -> None:
        servers: object = self.bootstrap_servers
        if isinstance(servers, str):  # hand-built settings may give a string for short
            object.__setattr__(self, "bootstrap_servers", tuple(servers.split(",")))
        super().__post_init__()
        servers = ",".join(self.bootstrap_servers)
        object.__setattr__(self, "bootstrap_servers", parse_bootstrap(servers))

    def check(self) -> Iterator[tuple[str, str]]:
        """The rules between fields (abe-core names the variable of each field it blames)."""
        try:
            parse_bootstrap(",".join(map(str, self.bootstrap_servers)))
        except ValueError as exc:
            yield "bootstrap_servers", str(exc)
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        unused = f"is set but KAFKA_SECURITY_PROTOCOL is {protocol}"
        for name in ("sasl_username", "sasl_password"):
            if sasl and getattr(self, name) is None:
                yield name, f"is required with KAFKA_SECURITY_PROTOCOL={protocol}"
            elif not sasl and getattr(self, name) is not None:
                yield name, f"{unused}; set it to SASL_SSL (or SASL_PLAINTEXT) to authenticate"
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
            if getattr(self, name) is not None and not protocol.endswith("SSL"):
                yield name, f"{unused}; set it to SSL (or SASL_SSL) to use TLS"
        if (self.min_insync_replicas or 0) > self.replication_factor:
            yield "min_insync_replicas", "must be at most ABE_KAFKA_REPLICATION_FACTOR"
        if (self.heartbeat_interval or 0) >= self.session_timeout:
            yield "heartbeat_interval", "must be less than ABE_KAFKA_SESSION_TIMEOUT"
        if self.group_instance_id is not None and not _NAME.fullmatch(self.group_instance_id):
            yield "group_instance_id", "must be 1 to 200 letters, digits, '.', '_' or '-'"

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client takes: brokers, identity, security, timeouts."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.endswith("SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            password = self.sasl_password.reveal() if self.sasl_password is not None else None
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = password
        return options

    def ssl_context(self) -> Any:
        """The TLS context; a file that does not load is a ConfigurationError naming it."""
        try:
            context = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
                # Never None: OpenSSL would prompt on the terminal for an encrypted key.
                password=self.ssl_key_password.reveal() if self.ssl_key_password else str,
            )
        except (ssl.SSLError, OSError) as exc:
            variable, problem = "KAFKA_SSL_CAFILE", f"does not load as PEM certificates ({exc})"
            if self.ssl_certfile is not None:
                variable = "KAFKA_SSL_KEYFILE"
                problem = f"does not load with KAFKA_SSL_CERTFILE ({exc}): check that the key "
                problem += "matches the certificate and that KAFKA_SSL_KEY_PASSWORD is its "
                problem += "password (set it only for an encrypted key)"
            raise ConfigurationError("kafka", {variable: problem}) from None
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
        session = self.session_timeout
        partition_bytes = self.max_payload_bytes + _RECORD_OVERHEAD
        return {
            **self.connection_options(),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": int(session * 1000),
            "heartbeat_interval_ms": int(1000 * (self.heartbeat_interval or min(3, session / 3))),
            "rebalance_timeout_ms": int(self.rebalance_wait * 1000),
            # abe decides when a member that stopped reading leaves (see the receiver).
            "max_poll_interval_ms": 24 * 3600 * 1000,
            "max_partition_fetch_bytes": partition_bytes,
            "fetch_max_bytes": max(partition_bytes, 4 * 1024 * 1024),
            "fetch_max_wait_ms": int(self.fetch_max_wait * 1000),
        }

    @property
    def rebalance_wait(self) -> float:
        """How long the group waits for members to settle their messages before a rebalance."""
        return self.rebalance_timeout or min(
            300.0, self.session_timeout + 3 * self.redelivery_timeout
        )
