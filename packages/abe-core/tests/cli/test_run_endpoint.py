"""`abe run --metrics-port`: what /metrics counts, and what /healthz and /readyz answer.

A Worker runs in this test's event loop on the memory backend; the endpoint is asked over
real HTTP on a free port. Needs prometheus-client (abe-core[metrics]).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("prometheus_client", reason="abe-core[metrics] is not installed")

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from abe import current_delivery, load_backend
from abe.backends.message_queue.base import Receiver
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.memory import MemoryBackend
from abe.cli.connect import LoadedBackend
from abe.cli.errors import EXIT_FAILURE, CommandError
from abe.cli.health import Endpoint
from abe.cli.metrics import ConsumerMetrics, exposition
from abe.cli.run import Worker
from abe.cli.target import Target

WAIT = 10.0


async def request(endpoint: Endpoint, path: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one HTTP request to the endpoint."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name` in a scrape, by their sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


class Settled(ConsumerMetrics):
    """ConsumerMetrics that also lets a test wait for a number of settled deliveries."""

    def __init__(self, registry: CollectorRegistry | None, expected: int) -> None:
        super().__init__(registry)
        self.outcomes: list[str | None] = []
        self.expected = expected
        self.done = asyncio.Event()

    def settled(self, delivery: Delivery) -> None:
        super().settled(delivery)
        self.outcomes.append(delivery.outcome)
        if len(self.outcomes) >= self.expected:
            self.done.set()


async def fails_when_bad(payload: dict[str, Any]) -> None:
    if payload.get("bad"):
        raise RuntimeError(f"cannot handle attempt {current_delivery().attempt}")


@pytest_asyncio.fixture
async def started() -> AsyncIterator[list[tuple[Worker, asyncio.Task[int]]]]:
    """Workers a test starts; any still running at the end are stopped."""
    running: list[tuple[Worker, asyncio.Task[int]]] = []
    yield running
    for worker, task in running:
        worker.request_stop("the test ended")
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT)


def start(running: list[tuple[Worker, asyncio.Task[int]]], worker: Worker) -> asyncio.Task[int]:
    task = asyncio.get_running_loop().create_task(worker.run())
    running.append((worker, task))
    return task


@pytest.mark.asyncio
async def test_metrics_count_each_outcome_and_time_each_handler_call(
    started: list[tuple[Worker, asyncio.Task[int]]],
) -> None:
    registry = CollectorRegistry()
    metrics = Settled(registry, expected=4)  # ok, ok, bad (retried), bad (dead-lettered)
    worker = Worker(
        Target("tests:fails_when_bad", fails_when_bad, ("orders",), routed=False),
        group="g",
        max_attempts=2,
        metrics=metrics,
        render_metrics=lambda: generate_latest(registry),
        http=("127.0.0.1", 0),
    )
    task = start(started, worker)
    async with load_backend() as backend:
        await backend.publish_many("orders", [{"n": 1}, {"n": 2}, {"n": 3, "bad": True}])
    await asyncio.wait_for(metrics.done.wait(), WAIT * 2)
    assert worker.endpoint is not None
    status, text = await request(worker.endpoint, "/metrics")
    assert status == 200
    labels = (("group", "g"), ("key", "orders"))
    assert samples(text, "abe_messages_consumed_total") == {labels: 4.0}
    assert samples(text, "abe_messages_acked_total") == {labels: 2.0}
    assert samples(text, "abe_messages_retried_total") == {labels: 1.0}
    assert samples(text, "abe_messages_dead_lettered_total") == {labels: 1.0}
    assert samples(text, "abe_messages_in_flight") == {labels: 0.0}
    assert samples(text, "abe_handler_duration_seconds_count") == {labels: 4.0}
    worker.request_stop("the test is done")
    assert worker.status() == "unready: stopping"
    assert await asyncio.wait_for(task, WAIT) == 0


@pytest.mark.asyncio
async def test_health_and_readiness_and_what_else_the_endpoint_answers(
    started: list[tuple[Worker, asyncio.Task[int]]],
) -> None:
    async def handle(payload: dict[str, Any]) -> None:
        pass

    worker = Worker(
        Target("tests:handle", handle, ("orders",), routed=False),
        group="g",
        http=("127.0.0.1", 0),
    )
    start(started, worker)
    await asyncio.wait_for(worker.joined.wait(), WAIT)
    endpoint = worker.endpoint
    assert endpoint is not None
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}"
    assert await request(endpoint, "/healthz") == (200, "ok\n")
    assert await request(endpoint, "/readyz") == (200, "ready\n")
    assert await request(endpoint, "/readyz?verbose=1") == (200, "ready\n")
    assert await request(endpoint, "/metrics") == (404, "metrics are not collected\n")
    assert await request(endpoint, "/healthz", method="HEAD") == (200, "")
    status, body = await request(endpoint, "/nothing")
    assert (status, body) == (404, "no /nothing here; try /healthz, /metrics, /readyz\n")
    assert (await request(endpoint, "/healthz", method="POST"))[0] == 405
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(b"nonsense\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 400 ")
    writer.close()


class _SlowToJoin(MemoryBackend):
    """Joins its group only once the test opens the gate: a broker that is slow to answer."""

    gate: asyncio.Event

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        await self.gate.wait()
        return await super()._open_receiver(group, keys)


@pytest.mark.asyncio
async def test_not_ready_until_joined_to_the_group_while_alive_all_along(
    started: list[tuple[Worker, asyncio.Task[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _SlowToJoin.from_env()
    backend.gate = asyncio.Event()
    monkeypatch.setattr("abe.cli.run.load", lambda: LoadedBackend(backend, fallback=False))

    async def handle(payload: dict[str, Any]) -> None:
        pass

    worker = Worker(
        Target("tests:handle", handle, ("orders",), routed=False),
        group="g",
        http=("127.0.0.1", 0),
    )
    start(started, worker)
    while worker.endpoint is None or worker.consumer is None:  # noqa: ASYNC110
        await asyncio.sleep(0)  # one loop turn at a time until it listens
    status, body = await request(worker.endpoint, "/readyz")
    assert (status, body) == (503, "unready: not yet joined to its group on the broker\n")
    assert await request(worker.endpoint, "/healthz") == (200, "ok\n")
    backend.gate.set()
    await asyncio.wait_for(worker.joined.wait(), WAIT)
    assert await request(worker.endpoint, "/readyz") == (200, "ready\n")


@pytest.mark.asyncio
async def test_a_port_in_use_is_an_error_naming_the_option() -> None:
    async def handle(payload: dict[str, Any]) -> None:
        pass

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(
            Target("tests:handle", handle, ("orders",), routed=False),
            group="g",
            http=("127.0.0.1", port),
        )
        with pytest.raises(CommandError, match=f"cannot serve metrics on 127.0.0.1:{port}") as err:
            await asyncio.wait_for(worker.run(), WAIT)
    assert err.value.code == EXIT_FAILURE
    assert "choose another --metrics-port" in str(err.value)


@pytest.mark.asyncio
async def test_alone_a_worker_serves_the_default_registry_with_the_applications_metrics(
    started: list[tuple[Worker, asyncio.Task[int]]],
) -> None:
    key = f"orders-{uuid.uuid4().hex[:6]}"
    name = f"app_things_{uuid.uuid4().hex[:6]}"
    own = Counter(name, "The application's own counter.")
    own.inc(3)
    try:

        async def handle(payload: dict[str, Any]) -> None:
            pass

        worker = Worker(
            Target("tests:handle", handle, (key,), routed=False),
            group="g",
            metrics=ConsumerMetrics.for_process(),
            render_metrics=exposition,
            http=("127.0.0.1", 0),
        )
        assert ConsumerMetrics.for_process() is worker.metrics  # one per process
        start(started, worker)
        async with load_backend() as backend:
            await backend.publish(key, {"n": 1})
        await asyncio.wait_for(worker.joined.wait(), WAIT)
        assert worker.endpoint is not None
        text = ""
        for _ in range(200):  # the ack is counted just after the handler returns
            text = (await request(worker.endpoint, "/metrics"))[1]
            if samples(text, "abe_messages_acked_total").get((("group", "g"), ("key", key))):
                break
            await asyncio.sleep(0.01)
        assert samples(text, "abe_messages_acked_total")[(("group", "g"), ("key", key))] == 1.0
        assert samples(text, f"{name}_total") == {(): 3.0}
    finally:
        REGISTRY.unregister(own)
