"""The four resolution steps for each broker kind, in the order DESIGN.md gives.

1. ``env``: the address in ``ABE_TEST_<KIND>_...``, vetted by a real request (dead = fail).
2. ``running``: a broker already on its usual loopback port, vetted the same way.
3. ``container``: testcontainers, when a Docker engine answers.
4. ``process``: a local server started on a free port (redis-server, nats-server -js,
   Tansu in memory, moto), removed with its files at session end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .containers import start_container
from .model import (
    ENV_ADDRESS_VARS,
    Broker,
    KafkaBroker,
    Kind,
    NatsBroker,
    RabbitmqBroker,
    RedisBroker,
    SqsBroker,
)
from .probes import probe_kafka, probe_nats, probe_rabbitmq, probe_redis, probe_sqs
from .procs import port_open
from .selection import EnvAddressUnusable, StepSkipped
from .servers import KafkaServer, MotoServer, NatsServer, RedisServer

B = TypeVar("B", bound=Broker)

LOOPBACK = "127.0.0.1"
USUAL_PORTS: dict[Kind, tuple[int, ...]] = {
    "redis": (6379,),
    "nats": (4222,),
    "kafka": (9092,),
    "sqs": (4566, 5000),  # LocalStack, moto
    "rabbitmq": (5672,),
}


@dataclass
class Provisioned(Generic[B]):
    """A broker record plus what tears it down at session end (None when it is not ours)."""

    broker: B
    close: Callable[[], None] | None = None


def redact(address: str) -> str:
    """``address`` with any password or token in a URL replaced by ``***``, for messages."""
    split = urlsplit(address)
    if not split.netloc or "@" not in split.netloc:
        return address
    userinfo, host = split.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit(split._replace(netloc=netloc))


def _explain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _vet(kind: Kind, address: str) -> str:
    """A real request against ``address``; returns a short description of what answered."""
    if kind == "redis":
        return f"Redis {probe_redis(address)}"
    if kind == "nats":
        return f"NATS {probe_nats(address)} with JetStream"
    if kind == "kafka":
        return f"Kafka protocol, advertised {probe_kafka(address)}"
    if kind == "rabbitmq":
        return f"RabbitMQ {probe_rabbitmq(address)}"
    probe_sqs(address)
    return "SQS ListQueues answered"


def _record(kind: Kind, address: str, source: str, detail: str) -> Broker:
    if kind == "redis":
        return RedisBroker(url=address, source=source, detail=detail)  # type: ignore[arg-type]
    if kind == "nats":
        return NatsBroker(url=address, source=source, detail=detail)  # type: ignore[arg-type]
    if kind == "kafka":
        return KafkaBroker(bootstrap=address, source=source, detail=detail)  # type: ignore[arg-type]
    if kind == "rabbitmq":
        return RabbitmqBroker(url=address, source=source, detail=detail)  # type: ignore[arg-type]
    return SqsBroker(endpoint_url=address, source=source, detail=detail)  # type: ignore[arg-type]


def from_env(kind: Kind) -> Provisioned[Broker]:
    """Step 1: the address in the kind's variable; one that does not work stops the search."""
    var = ENV_ADDRESS_VARS[kind]
    address = os.environ.get(var, "").strip()
    if not address:
        raise StepSkipped(f"{var} not set")
    try:
        what = _vet(kind, address)
    except Exception as exc:
        raise EnvAddressUnusable(
            f"{var}={redact(address)} did not answer: {_explain(exc)}"
        ) from exc
    return Provisioned(_record(kind, address, "env", f"{var}; {what}"))


def already_running(kind: Kind) -> Provisioned[Broker]:
    """Step 2: a broker on the kind's usual loopback port that answers a real request."""
    failures: list[str] = []
    for port in USUAL_PORTS[kind]:
        if not port_open(LOOPBACK, port):
            failures.append(f"nothing listening on {LOOPBACK}:{port}")
            continue
        if kind == "redis":
            address = f"redis://{LOOPBACK}:{port}/0"
        elif kind == "nats":
            address = f"nats://{LOOPBACK}:{port}"
        elif kind == "kafka":
            address = f"{LOOPBACK}:{port}"
        elif kind == "rabbitmq":
            address = f"amqp://guest:guest@{LOOPBACK}:{port}/"
        else:
            address = f"http://{LOOPBACK}:{port}"
        try:
            what = _vet(kind, address)
        except Exception as exc:
            failures.append(f"{LOOPBACK}:{port} answered but is unusable ({_explain(exc)})")
            continue
        return Provisioned(_record(kind, address, "running", f"already running; {what}"))
    if all(f.startswith("nothing listening") for f in failures):
        raise StepSkipped("; ".join(failures))
    raise RuntimeError("; ".join(failures))


def in_container(kind: Kind) -> Provisioned[Broker]:
    """Step 3: a testcontainers container (skipped at once when no Docker engine answers)."""
    container = start_container(kind)
    return Provisioned(
        _record(kind, container.address, "container", container.detail), container.close
    )


class LazyMoto:
    """One moto server for the session, started on first use (SQS fallback and Tansu's S3)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: MotoServer | None = None
        self._error: BaseException | None = None

    def get(self) -> MotoServer:
        """The running moto server, starting it the first time; a failed start is not retried."""
        with self._lock:
            if self._error is not None:
                raise RuntimeError(f"moto server failed to start earlier: {self._error}")
            if self._server is None:
                directory = Path(tempfile.mkdtemp(prefix="abe-moto-"))
                try:
                    server = MotoServer(directory)
                    server.start()
                except BaseException as exc:
                    shutil.rmtree(directory, ignore_errors=True)
                    self._error = exc
                    raise
                self._server = server
            return self._server

    @property
    def started(self) -> bool:
        """Whether a moto server is up."""
        return self._server is not None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.kill()
            shutil.rmtree(server.directory, ignore_errors=True)


def as_process(kind: Kind, moto: LazyMoto) -> Provisioned[Broker]:
    """Step 4: a server process of our own on a free loopback port, in a temporary directory."""
    if kind == "sqs":
        server = moto.get()
        return Provisioned(
            _record(kind, server.endpoint_url, "process", f"moto server pid {server.pid}")
        )
    if kind == "rabbitmq":
        raise StepSkipped("no session RabbitMQ of our own: start rabbitmq-server on 5672")
    directory = Path(tempfile.mkdtemp(prefix=f"abe-{kind}-session-"))
    try:
        proc: RedisServer | NatsServer | KafkaServer
        if kind == "redis":
            proc = RedisServer(directory, persistent=False)
        elif kind == "nats":
            proc = NatsServer(directory)
        else:
            proc = KafkaServer(directory, s3=None, storage="memory")
        proc.start()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise

    def close() -> None:
        proc.kill()
        shutil.rmtree(directory, ignore_errors=True)

    address = proc.bootstrap if isinstance(proc, KafkaServer) else proc.url
    name = {"redis": "redis-server", "nats": "nats-server -js", "kafka": "tansu (memory)"}[kind]
    return Provisioned(_record(kind, address, "process", f"{name} pid {proc.pid}"), close)


STEPS = ("env", "running", "container", "process")
STEPS_VAR = "ABE_TEST_BROKER_STEPS"


def enabled_steps(value: str | None) -> tuple[str, ...]:
    """The steps ``ABE_TEST_BROKER_STEPS`` allows (all when unset); unknown names are errors.

    ``ABE_TEST_BROKER_STEPS=process`` gives fresh brokers of our own instead of shared ones.
    """
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ValueError(f"{STEPS_VAR}: unknown step(s) {unknown} (known: {', '.join(STEPS)})")
    return tuple(n for n in STEPS if n in names) if names else STEPS


def steps_for(kind: Kind, moto: LazyMoto) -> list[tuple[str, Callable[[], Provisioned[Broker]]]]:
    """The resolution steps for ``kind`` in order, ready for :func:`selection.resolve`."""
    allowed = enabled_steps(os.environ.get(STEPS_VAR))
    steps: list[tuple[str, Callable[[], Provisioned[Broker]]]] = [
        ("env", lambda: from_env(kind)),
        ("running", lambda: already_running(kind)),
        ("container", lambda: in_container(kind)),
        ("process", lambda: as_process(kind, moto)),
    ]
    return [(name, step) for name, step in steps if name in allowed]
