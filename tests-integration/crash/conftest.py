"""Fixtures of the crash test: a durable broker of the test's own per kind, and the run.

Each broker is one the test may crash (kill -9, then start with the same data): Redis
with an append-only file fsynced on every write, NATS JetStream on a file store, Tansu
(Kafka) storing in S3 on moto. SQS is moto's, shared by the session and not restarted
(moto keeps its state in memory). Sizes come from ``ABE_CRASH_*`` (see abe_crash/sizes.py);
``nox -s crash -- --messages 10000`` sets ``ABE_CRASH_MESSAGES``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from abe_brokers import (  # noqa: E402
    KafkaServerFactory,
    NatsServerFactory,
    RedisServerFactory,
    SqsBroker,
    unique_name,
)
from abe_crash.run import CrashRun, Target  # noqa: E402
from abe_crash.sizes import Sizes  # noqa: E402
from abe_crash.verdict import Verdict  # noqa: E402

_SUMMARY = pytest.StashKey[list[str]]()

KAFKA_ENV = {"ABE_KAFKA_IDEMPOTENT": "false"}
"""Tansu answers InitProducerId with an error: the idempotent producer must be off."""


@pytest.fixture(scope="session")
def crash_sizes() -> Sizes:
    """CI sizes, or what ABE_CRASH_* asks for."""
    try:
        return Sizes.from_env()
    except ValueError as exc:
        pytest.fail(f"bad crash-test size: {exc}", pytrace=False)


@pytest.fixture
def redis_target(redis_server_factory: RedisServerFactory) -> Target:
    """A redis-server of the test's own, AOF with appendfsync always."""
    server = redis_server_factory()
    return Target("redis", {"REDIS_URL": server.url}, server, "redis-server, AOF fsync always")


@pytest.fixture
def nats_target(nats_server_factory: NatsServerFactory) -> Target:
    """A nats-server of the test's own, JetStream on a file store."""
    server = nats_server_factory()
    return Target("nats", {"NATS_URL": server.url}, server, "nats-server -js, file store")


@pytest.fixture
def kafka_target(kafka_server_factory: KafkaServerFactory) -> Target:
    """A Tansu broker of the test's own, storing in S3 on moto (survives kill -9)."""
    server = kafka_server_factory(storage="s3")
    env = {"KAFKA_BOOTSTRAP_SERVERS": server.bootstrap, **KAFKA_ENV}
    storage = {**server.storage_env, "ABE_CRASH_TANSU_BUCKET": server.bucket}
    describe = f"tansu, storage {server.storage}"
    return Target("kafka", env, server, describe, inspect_env=storage)


@pytest.fixture
def sqs_target(sqs_broker: SqsBroker) -> Target:
    """The session's SQS endpoint; not restarted (moto keeps its queues in memory)."""
    return Target("sqs", sqs_broker.env(), None, f"{sqs_broker.source} SQS", shared=True)


@pytest.fixture
def crash(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    crash_sizes: Sizes,
    record_property: Callable[[str, object], None],
) -> Iterator[Callable[[Target], Verdict]]:
    """`crash(target)` conducts one run on `target` and returns its verdict (figures recorded)."""
    runs: list[CrashRun] = []

    def run(target: Target) -> Verdict:
        crash_run = CrashRun(
            target,
            crash_sizes,
            tmp_path / "run",
            key=unique_name("crash"),
            group=unique_name("crash-group"),
        )
        runs.append(crash_run)
        verdict = crash_run.run()
        for name, value in verdict.figures.items():
            record_property(name, value)
        record_property("broker", target.describe)
        record_property("files", str(crash_run.directory))
        lines = request.config.stash.setdefault(_SUMMARY, [])
        lines.append(f"{verdict.summary()} [{target.describe}; files in {crash_run.directory}]")
        return verdict

    try:
        yield run
    finally:
        for crash_run in runs:
            crash_run.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line of figures per broker run, whatever the outcome."""
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("abe crash test")
        for line in lines:
            terminalreporter.write_line(line)
