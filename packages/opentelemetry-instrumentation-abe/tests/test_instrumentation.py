"""AbeInstrumentor on the memory backend, read back through the SDK's in-memory exporters.

Each test instruments with its own TracerProvider (in-memory span exporter) and
MeterProvider (in-memory reader) and uninstruments after, so nothing leaks between tests.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.instrumentation.abe import AbeInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from abe import AsyncLoopConsumer, MemoryBackend, current_delivery
from abe.backends.message_queue.base.headers import MAX_USER_HEADER_BYTES
from abe.backends.message_queue.protocol_backend import ProtocolBackend, ProtocolOnlyWarning
from abe.errors import PayloadError
from abe.middleware import installed
from abe.testing.helpers import next_delivery

pytestmark = pytest.mark.asyncio

WAIT = 10.0


@dataclass
class Telemetry:
    """What the instrumentation exported during one test."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    instrumentor: AbeInstrumentor

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.exporter.get_finished_spans())
        return [span for span in found if name is None or span.name == name]

    def metric(self, name: str) -> Metric:
        data = self.reader.get_metrics_data()
        assert data is not None, "no metrics were recorded at all"
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric
        raise AssertionError(f"no metric named {name!r} was recorded")

    def points(self, name: str) -> list[Any]:
        return list(self.metric(name).data.data_points)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    instrumentor = AbeInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    try:
        yield Telemetry(exporter, reader, tracer_provider, instrumentor)
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    assert installed() == ()


Handler = Callable[[Any], Awaitable[None]]


async def run_consumer(
    backend: Any, key: str, handler: Handler, done: asyncio.Event, **options: Any
) -> AsyncLoopConsumer:
    """Run an AsyncLoopConsumer (group "billing") on `key` until `done` is set."""
    consumer = AsyncLoopConsumer(backend, "billing", keys=key, **options)
    task = asyncio.ensure_future(consumer.run(handler))
    try:
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        await consumer.shutdown()
        await task
    return consumer


async def handle_one(backend: Any, key: str) -> trace.SpanContext:
    """Handle one message of `key`; the span context current inside the handler."""
    seen: list[trace.SpanContext] = []
    done = asyncio.Event()

    async def handler(payload: Any) -> None:
        seen.append(trace.get_current_span().get_span_context())
        done.set()

    await run_consumer(backend, key, handler, done)
    return seen[0]


async def test_a_trace_started_before_publish_continues_in_the_handler(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    tracer = telemetry.tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("checkout") as request:
        await backend.publish("orders", {"id": 7}, message_id="order-7")
    in_handler = await handle_one(backend, "orders")

    (publish,) = telemetry.spans("publish orders")
    (process,) = telemetry.spans("process orders")
    trace_id = request.get_span_context().trace_id
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None
    assert publish.context is not None
    assert process.context.trace_id == publish.context.trace_id == trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.parent.is_remote  # it came through the message headers
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    assert in_handler.span_id == process.context.span_id  # current while the handler runs
    assert publish.status.status_code is StatusCode.UNSET
    assert process.status.status_code is StatusCode.UNSET


async def test_the_headers_carry_the_publish_spans_w3c_context(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1}, headers={"tenant": "acme"})
    (publish,) = telemetry.spans("publish orders")
    async with backend.subscribe(group="g", keys="orders") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        await delivery.ack()
    assert publish.context is not None
    span_id = f"{publish.context.span_id:016x}"
    trace_id = f"{publish.context.trace_id:032x}"
    flags = f"{publish.context.trace_flags:02x}"
    assert publish.context.trace_flags.sampled
    assert delivery.headers["traceparent"] == f"00-{trace_id}-{span_id}-{flags}"
    assert delivery.headers["tenant"] == "acme"  # the caller's own headers are kept


async def test_span_attributes_follow_the_messaging_conventions(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1}, message_id="order-1")
    await handle_one(backend, "orders")
    (publish,) = telemetry.spans("publish orders")
    (process,) = telemetry.spans("process orders")
    assert dict(publish.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.message.id": "order-1",
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": "order-1",
    }
    assert publish.instrumentation_scope is not None
    assert publish.instrumentation_scope.name == "opentelemetry.instrumentation.abe"
    assert publish.instrumentation_scope.schema_url == "https://opentelemetry.io/schemas/1.28.0"


async def test_metrics_count_messages_and_time_operations(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1})
    await backend.publish_many("orders", [{"id": 2}, {"id": 3}])
    done = asyncio.Event()
    handled: list[Any] = []

    async def handler(payload: Any) -> None:
        handled.append(payload)
        if len(handled) == 3:
            done.set()

    await run_consumer(backend, "orders", handler, done)
    send = {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
    }
    process = {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
    }
    (sent,) = telemetry.points("messaging.client.sent.messages")
    assert (dict(sent.attributes), sent.value) == (send, 3)
    (consumed,) = telemetry.points("messaging.client.consumed.messages")
    assert (dict(consumed.attributes), consumed.value) == (process, 3)
    (operation,) = telemetry.points("messaging.client.operation.duration")
    assert (dict(operation.attributes), operation.count) == (send, 2)  # two publish calls
    (processing,) = telemetry.points("messaging.process.duration")
    assert (dict(processing.attributes), processing.count) == (process, 3)
    assert 0 < processing.sum < WAIT
    units = {
        name: telemetry.metric(name).unit
        for name in (
            "messaging.client.sent.messages",
            "messaging.client.consumed.messages",
            "messaging.client.operation.duration",
            "messaging.process.duration",
        )
    }
    assert units == {
        "messaging.client.sent.messages": "{message}",
        "messaging.client.consumed.messages": "{message}",
        "messaging.client.operation.duration": "s",
        "messaging.process.duration": "s",
    }
    assert list(operation.explicit_bounds)[:3] == [0.005, 0.01, 0.025]


async def test_a_failing_handler_marks_its_span_and_metrics_then_the_retry_succeeds(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1})
    attempts: list[int] = []
    done = asyncio.Event()

    async def handler(payload: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("card declined")
        done.set()

    await run_consumer(backend, "orders", handler, done, retry_delay=0.01)
    (publish,) = telemetry.spans("publish orders")
    failed, succeeded = telemetry.spans("process orders")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: card declined"
    assert (failed.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in failed.events] == ["exception"]
    assert succeeded.status.status_code is StatusCode.UNSET
    assert "error.type" not in (succeeded.attributes or {})
    assert publish.context is not None
    for span in (failed, succeeded):  # both attempts continue the publisher's trace
        assert span.parent is not None
        assert span.parent.span_id == publish.context.span_id
    errors = {
        dict(point.attributes).get("error.type"): point.count
        for point in telemetry.points("messaging.process.duration")
    }
    assert errors == {"ValueError": 1, None: 1}


async def test_a_refused_publish_is_an_error_span_and_still_raises(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    with pytest.raises(PayloadError, match="Nats-Rollup"):
        await backend.publish("orders", {"id": 1}, headers={"Nats-Rollup": "all"})
    (publish,) = telemetry.spans("publish orders")
    assert publish.status.status_code is StatusCode.ERROR
    assert (publish.attributes or {})["error.type"] == "abe.errors.PayloadError"
    (sent,) = telemetry.points("messaging.client.sent.messages")
    assert dict(sent.attributes)["error.type"] == "abe.errors.PayloadError"
    assert backend.broker.messages("orders") == []


async def test_publish_many_is_one_span_and_every_message_continues_it(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    await backend.publish_many("orders", [{"id": n} for n in range(3)], message_ids=["a", "b", "c"])
    done = asyncio.Event()
    handled: list[Any] = []

    async def handler(payload: Any) -> None:
        handled.append(payload)
        if len(handled) == 3:
            done.set()

    await run_consumer(backend, "orders", handler, done)
    (publish,) = telemetry.spans("publish orders")
    attributes = dict(publish.attributes or {})
    assert attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in attributes  # a batch has no single id
    processed = telemetry.spans("process orders")
    assert publish.context is not None
    assert sorted((span.attributes or {})["messaging.message.id"] for span in processed) == [
        "a",
        "b",
        "c",
    ]
    for span in processed:
        assert span.parent is not None
        assert span.parent.span_id == publish.context.span_id


async def test_publishing_from_a_handler_continues_the_same_trace(telemetry: Telemetry) -> None:
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1})
    done = asyncio.Event()

    async def handler(payload: Any) -> None:
        await backend.publish("invoices", {"order": payload["id"]})
        done.set()

    await run_consumer(backend, "orders", handler, done)
    (first,) = telemetry.spans("publish orders")
    (process,) = telemetry.spans("process orders")
    (second,) = telemetry.spans("publish invoices")
    assert process.context is not None
    assert first.context is not None
    assert second.parent is not None
    assert second.parent.span_id == process.context.span_id
    assert second.context is not None
    assert second.context.trace_id == first.context.trace_id


async def test_a_message_without_trace_context_starts_a_trace_of_its_own(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    telemetry.instrumentor.uninstrument()
    await backend.publish("orders", {"id": 1})  # written without instrumentation
    telemetry.instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    tracer = telemetry.tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("startup"):  # the consumer starts inside some span
        await handle_one(backend, "orders")
    (process,) = telemetry.spans("process orders")
    assert process.parent is None
    assert list(process.links) == []


async def test_baggage_travels_and_context_that_does_not_fit_is_left_out(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        await backend.publish("small", {"id": 1})
        # Each entry is within the baggage limits, together they are over abe's header limit.
        half = "x" * (MAX_USER_HEADER_BYTES // 2)
        huge_token = context.attach(baggage.set_baggage("b", half, baggage.set_baggage("a", half)))
        try:
            await backend.publish("large", {"id": 2})
        finally:
            context.detach(huge_token)
        # The caller's headers fill the limit: nothing more fits, and the publish still works.
        full = {"filler": "y" * (MAX_USER_HEADER_BYTES - len("filler"))}
        await backend.publish("full", {"id": 3}, headers=full)
    finally:
        context.detach(token)
    headers = {}
    async with backend.subscribe(group="g", keys=["small", "large", "full"]) as subscription:
        for _ in range(3):
            delivery = await next_delivery(subscription, WAIT)
            headers[delivery.key] = dict(delivery.headers)
            await delivery.ack()
    assert headers["small"]["baggage"] == "tenant=acme"
    assert "traceparent" in headers["small"]
    assert "baggage" not in headers["large"]
    assert "traceparent" in headers["large"]
    assert "traceparent" not in headers["full"]
    assert headers["full"]["filler"] == full["filler"]
    assert len(telemetry.spans()) == 3
    assert all(span.status.status_code is StatusCode.UNSET for span in telemetry.spans())


class _ProtocolOnly:
    """A backend with only the upstream protocol's publish and consume, and no headers."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def publish(self, key: str, payload: Any) -> None:
        await self.queue.put(payload)

    async def consume(self, *, group: str | None = None) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()


async def test_a_protocol_only_backend_is_traced_without_headers(telemetry: Telemetry) -> None:
    wrapped = _ProtocolOnly()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProtocolOnlyWarning)
        backend = ProtocolBackend(wrapped)
        await backend.publish("orders", {"id": 1})  # would raise if a header were added
        await handle_one(backend, "orders")
    (publish,) = telemetry.spans("publish orders")
    (process,) = telemetry.spans("process orders")
    assert publish.status.status_code is StatusCode.UNSET
    assert (publish.attributes or {})["messaging.system"] == "protocol"
    assert (process.attributes or {})["messaging.system"] == "protocol"
    assert process.parent is None  # no headers, so no context to continue


async def test_uninstrument_removes_it_even_from_a_running_consumer(
    telemetry: Telemetry,
) -> None:
    backend = MemoryBackend()
    consumer = AsyncLoopConsumer(backend, "billing", keys="orders")
    handled: list[Any] = []
    headers: list[dict[str, str]] = []
    arrived = asyncio.Event()

    async def handler(payload: Any) -> None:
        handled.append(payload)
        headers.append(dict(current_delivery().headers))
        arrived.set()

    task = asyncio.ensure_future(consumer.run(handler))
    try:
        await backend.publish("orders", {"id": 1})
        await asyncio.wait_for(arrived.wait(), WAIT)
        assert len(telemetry.spans("process orders")) == 1
        telemetry.instrumentor.uninstrument()
        assert installed() == ()
        arrived.clear()
        await backend.publish("orders", {"id": 2})
        await asyncio.wait_for(arrived.wait(), WAIT)
    finally:
        await consumer.shutdown()
        await task
    assert handled == [{"id": 1}, {"id": 2}]
    assert [span.name for span in telemetry.spans()] == ["publish orders", "process orders"]
    assert "traceparent" in headers[0]
    assert "traceparent" not in headers[1]


async def test_instrumenting_twice_is_harmless(telemetry: Telemetry) -> None:
    AbeInstrumentor().instrument(tracer_provider=telemetry.tracer_provider)
    assert len(installed()) == 1
    backend = MemoryBackend()
    await backend.publish("orders", {"id": 1})
    assert [span.name for span in telemetry.spans()] == ["publish orders"]
