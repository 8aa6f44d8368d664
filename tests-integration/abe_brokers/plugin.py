"""The pytest side: session broker fixtures, test-owned server factories, and the CI report lines.

``tests-integration/conftest.py`` imports everything in ``__all__`` here. Fixtures are
synchronous (they only hand out addresses and manage processes), so they work with
pytest-asyncio in strict mode whatever loop scope a test uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from .brokers import STEPS_VAR, LazyMoto, Provisioned, enabled_steps, redact, steps_for
from .clusters import KafkaCluster, NatsCluster, RedisCluster, redis_cli_binary
from .model import (
    ENV_ADDRESS_VARS,
    Broker,
    KafkaBroker,
    Kind,
    NatsBroker,
    RabbitmqBroker,
    RedisBroker,
    SqsBroker,
    broker_address,
)
from .selection import REQUIRE_VAR, Resolution, required_kinds, resolve, unavailable
from .servers import (
    KafkaServerFactory,
    MotoServer,
    NatsServerFactory,
    RabbitmqServerFactory,
    RedisServerFactory,
    moto_available,
    nats_server_binary,
    rabbitmq_server_script,
    redis_server_binary,
    tansu_binary,
)
from .tansu_fault import pytest_runtest_call
from .tls import TlsFiles, make_tls_files

__all__ = [
    "pytest_configure",
    "pytest_runtest_call",
    "pytest_report_header",
    "pytest_terminal_summary",
    "abe_moto",
    "redis_broker",
    "nats_broker",
    "kafka_broker",
    "sqs_broker",
    "rabbitmq_broker",
    "redis_server_factory",
    "nats_server_factory",
    "kafka_server_factory",
    "rabbitmq_server_factory",
    "redis_cluster",
    "nats_cluster",
    "kafka_cluster",
    "tls_files",
]

B = TypeVar("B", bound=Broker)
T = TypeVar("T")


@dataclass
class _Line:
    """One report line: how a kind was resolved (or why not) and how long it took."""

    kind: str
    text: str


_LINES = pytest.StashKey[list[_Line]]()


def pytest_configure(config: pytest.Config) -> None:
    """Reject a misspelt ``ABE_REQUIRE_BROKERS`` or ``ABE_TEST_BROKER_STEPS`` before any test."""
    try:
        required_kinds(os.environ.get(REQUIRE_VAR))
        enabled_steps(os.environ.get(STEPS_VAR))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_LINES] = []


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say up front which brokers are required and which addresses the environment gives."""
    required = sorted(required_kinds(os.environ.get(REQUIRE_VAR)))
    given = [
        f"{var}={redact(os.environ[var])}"
        for var in ENV_ADDRESS_VARS.values()
        if os.environ.get(var)
    ]
    steps = " > ".join(enabled_steps(os.environ.get(STEPS_VAR)))
    return [
        f"abe brokers: required={','.join(required) or 'none'} (from {REQUIRE_VAR});"
        f" order {steps}; env addresses: {', '.join(given) or 'none'}"
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List which broker each kind used (source, address, time to come up), for CI logs."""
    lines = terminalreporter.config.stash.get(_LINES, [])
    if not lines:
        return
    terminalreporter.section("abe brokers")
    for line in lines:
        terminalreporter.write_line(f"{line.kind}: {line.text}")


def _required(kind: Kind) -> bool:
    return kind in required_kinds(os.environ.get(REQUIRE_VAR))


def _note(config: pytest.Config, kind: str, text: str) -> None:
    lines = config.stash.setdefault(_LINES, [])
    if _Line(kind, text) not in lines:  # a factory skipped in many tests is said once
        lines.append(_Line(kind, text))


def _raise_verdict(resolution: Resolution[T]) -> NoReturn:
    if resolution.verdict == "fail":
        pytest.fail(resolution.message, pytrace=False)
    pytest.skip(resolution.message)


def _unavailable(config: pytest.Config, kind: Kind, what: str, reason: str) -> NoReturn:
    """Skip (or fail, when required) a test whose test-owned server cannot be had."""
    resolution: Resolution[object] = unavailable(
        kind, f"{what}: {reason}", required=_required(kind)
    )
    _note(config, kind, f"{what} {resolution.verdict}: {reason}")
    _raise_verdict(resolution)


def _provide(
    request: pytest.FixtureRequest, kind: Kind, moto: LazyMoto, cls: type[B]
) -> Iterator[B]:
    resolution = resolve(kind, steps_for(kind, moto), required=_required(kind))
    if resolution.verdict != "ok" or resolution.value is None:
        _note(request.config, kind, f"{resolution.verdict.upper()}: {resolution.message}")
        _raise_verdict(resolution)
    provisioned: Provisioned[Broker] = resolution.value
    broker = provisioned.broker
    assert isinstance(broker, cls)
    tried = ", ".join(f"{a.step} {a.outcome}" for a in resolution.attempts)
    _note(
        request.config,
        kind,
        f"{broker.source} {redact(broker_address(broker))} ready in {resolution.seconds:.2f}s"
        f" ({broker.detail}; tried: {tried})",
    )
    try:
        yield broker
    finally:
        if provisioned.close is not None:
            provisioned.close()


@pytest.fixture(scope="session")
def abe_moto() -> Iterator[LazyMoto]:
    """The session's moto server, started on first use: SQS fallback and S3 for Tansu."""
    moto = LazyMoto()
    try:
        yield moto
    finally:
        moto.close()


@pytest.fixture(scope="session")
def redis_broker(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[RedisBroker]:
    """A Redis 5+ for the session: env, running on 6379, container, or a redis-server of ours."""
    yield from _provide(request, "redis", abe_moto, RedisBroker)


@pytest.fixture(scope="session")
def nats_broker(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[NatsBroker]:
    """A NATS with JetStream for the session: env, running on 4222, container, or our own."""
    yield from _provide(request, "nats", abe_moto, NatsBroker)


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker for the session: env, running on 9092, container, or Tansu."""
    yield from _provide(request, "kafka", abe_moto, KafkaBroker)


@pytest.fixture(scope="session")
def sqs_broker(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[SqsBroker]:
    """An SQS endpoint for the session: env, LocalStack/moto on 4566/5000, container, or moto."""
    yield from _provide(request, "sqs", abe_moto, SqsBroker)


@pytest.fixture(scope="session")
def rabbitmq_broker(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[RabbitmqBroker]:
    """A RabbitMQ 3.10+ for the session: env, running on 5672, or a container."""
    yield from _provide(request, "rabbitmq", abe_moto, RabbitmqBroker)


def _tool(config: pytest.Config, kind: Kind, what: str, find: Callable[[], str]) -> str:
    try:
        return find()
    except Exception as exc:
        _unavailable(config, kind, what, str(exc))


@pytest.fixture
def redis_server_factory(request: pytest.FixtureRequest) -> Iterator[RedisServerFactory]:
    """Make restartable redis-servers (AOF, fsync always) owned by this test; killed after it."""
    binary = _tool(request.config, "redis", "redis_server_factory", redis_server_binary)
    factory = RedisServerFactory(binary)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def nats_server_factory(request: pytest.FixtureRequest) -> Iterator[NatsServerFactory]:
    """Make restartable nats-servers (JetStream file store) owned by this test; killed after."""
    binary = _tool(request.config, "nats", "nats_server_factory", nats_server_binary)
    factory = NatsServerFactory(binary)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def rabbitmq_server_factory(request: pytest.FixtureRequest) -> Iterator[RabbitmqServerFactory]:
    """Make restartable RabbitMQ nodes of their own (data kept across restarts); killed after."""
    script = _tool(request.config, "rabbitmq", "rabbitmq_server_factory", rabbitmq_server_script)
    factory = RabbitmqServerFactory(script)
    try:
        yield factory
    finally:
        factory.close()


def _moto_installed() -> str:
    moto_available()
    return "moto"


@pytest.fixture
def kafka_server_factory(
    request: pytest.FixtureRequest, abe_moto: LazyMoto
) -> Iterator[KafkaServerFactory]:
    """Make restartable Tansu brokers storing in moto S3 (data survives kill -9); killed after."""
    config = request.config
    binary = _tool(config, "kafka", "kafka_server_factory", tansu_binary)
    _tool(config, "kafka", "kafka_server_factory", _moto_installed)

    def s3() -> MotoServer:
        try:
            return abe_moto.get()
        except Exception as exc:
            _unavailable(config, "kafka", "kafka_server_factory (moto S3)", str(exc))

    factory = KafkaServerFactory(binary, s3)
    try:
        yield factory
    finally:
        factory.close()


C = TypeVar("C", RedisCluster, NatsCluster, KafkaCluster)


def _cluster(
    request: pytest.FixtureRequest, kind: Kind, make: Callable[[Path], C], prefix: str
) -> Iterator[C]:
    """Start a cluster of our own (the only step: its nodes get killed); skip or fail if not."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    made: list[C] = []

    def start() -> C:
        cluster = make(directory)
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        resolution = resolve(kind, [("process", start)], required=_required(kind))
        if resolution.verdict != "ok" or resolution.value is None:
            _note(request.config, kind, f"{resolution.verdict.upper()}: {resolution.message}")
            _raise_verdict(resolution)
        cluster = resolution.value
        pids = ", ".join(str(pid) for pid in cluster.pids)
        _note(
            request.config,
            kind,
            f"process {cluster.describe()} ready in {resolution.seconds:.2f}s (pids {pids})",
        )
        yield cluster
    finally:
        for cluster in made:
            cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    """Six redis-servers in cluster mode, three masters with a replica each, on loopback;
    a test may kill and restart nodes (a master's replica takes over in a few seconds)."""
    config = request.config
    binary = _tool(config, "redis-cluster", "redis_cluster", redis_server_binary)
    cli = _tool(config, "redis-cluster", "redis_cluster", redis_cli_binary)

    def make(path: Path) -> RedisCluster:
        return RedisCluster(path, binary=binary, cli=cli)

    yield from _cluster(request, "redis-cluster", make, "abe-redis-cluster-")


@pytest.fixture(scope="session")
def nats_cluster(request: pytest.FixtureRequest) -> Iterator[NatsCluster]:
    """Three nats-servers with JetStream, routed on loopback; a test may kill and restart nodes."""
    binary = _tool(request.config, "nats-cluster", "nats_cluster", nats_server_binary)
    yield from _cluster(
        request, "nats-cluster", lambda path: NatsCluster(path, binary=binary), "abe-nats-cluster-"
    )


@pytest.fixture(scope="session")
def kafka_cluster(request: pytest.FixtureRequest, abe_moto: LazyMoto) -> Iterator[KafkaCluster]:
    """Three Tansu brokers sharing one moto S3 bucket; a test may kill and restart brokers."""
    config = request.config
    binary = _tool(config, "kafka-cluster", "kafka_cluster", tansu_binary)
    _tool(config, "kafka-cluster", "kafka_cluster", _moto_installed)

    def make(path: Path) -> KafkaCluster:
        return KafkaCluster(path, abe_moto.get(), binary=binary)

    yield from _cluster(request, "kafka-cluster", make, "abe-kafka-cluster-")


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TlsFiles]:
    """A throwaway CA with a loopback server certificate and a client certificate (PEM files)."""
    pytest.importorskip("cryptography", reason="TLS tests need the cryptography package")
    directory = Path(tempfile.mkdtemp(prefix="abe-tls-"))
    try:
        yield make_tls_files(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
