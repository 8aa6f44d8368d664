"""Traces and metrics across real brokers: the context travels in each broker's headers.

On Redis, NATS, Kafka and SQS: a trace started before `publish` continues in the
handler (same trace id, parented on the publish span, linked to it), `publish_many`
is one span that every message continues, and the four messaging metrics are recorded.
The last test runs a plain abe program, which imports nothing of OpenTelemetry, under
`opentelemetry-instrument` and finds the same spans and metrics in its console output.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.abe import AbeInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from abe import AsyncLoopConsumer, current_delivery
from abe.provider import BaseBackend
from abe.testing import unique

BROKERS = ("redis", "nats", "kafka", "sqs")
SYSTEMS = {"redis": "redis", "nats": "nats", "kafka": "kafka", "sqs": "aws_sqs"}
WAIT = 60.0
"""Seconds to wait for a handler: a Kafka group join on Tansu takes a few."""

OpenBackend = Callable[[str, list[str]], AbstractAsyncContextManager[BaseBackend]]


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


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
        yield Telemetry(exporter, reader, tracer_provider)
    finally:
        instrumentor.uninstrument()


async def consume(backend: BaseBackend, key: str, group: str, count: int) -> list[tuple[Any, str]]:
    """Run a consumer on `key` until it has handled `count` messages; (payload, id) of each."""
    handled: list[tuple[Any, str]] = []
    done = asyncio.Event()

    async def handler(payload: Any) -> None:
        handled.append((payload, current_delivery().id))
        if len(handled) == count:
            done.set()

    consumer = AsyncLoopConsumer(backend, group, keys=key)
    task = asyncio.ensure_future(consumer.run(handler))
    try:
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        await consumer.shutdown()
        await task
    return handled


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", BROKERS)
async def test_a_trace_started_before_publish_continues_in_the_handler(
    kind: str, backend_on: OpenBackend, telemetry: Telemetry
) -> None:
    key, group = unique("otel"), unique("group")
    async with backend_on(kind, [key]) as backend:
        tracer = telemetry.tracer_provider.get_tracer("shop")
        with tracer.start_as_current_span("checkout") as request:
            await backend.publish(key, {"order": 1}, message_id="order-1")
        ((payload, delivery_id),) = await consume(backend, key, group, 1)
    assert payload == {"order": 1}

    (publish,) = telemetry.spans(f"publish {key}")
    (process,) = telemetry.spans(f"process {key}")
    assert publish.context is not None
    assert process.context is not None
    assert publish.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    attributes = dict(process.attributes or {})
    assert attributes == {
        "messaging.system": SYSTEMS[kind],
        "messaging.destination.name": key,
        "messaging.consumer.group.name": group,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": delivery_id,  # the id abe gives the handler
    }
    if kind in ("redis", "nats"):  # Kafka and SQS name a delivery by the broker's id
        assert delivery_id == "order-1"
    assert (publish.attributes or {})["messaging.system"] == SYSTEMS[kind]

    (sent,) = telemetry.points("messaging.client.sent.messages")
    assert sent.value == 1
    assert dict(sent.attributes)["messaging.destination.name"] == key
    (consumed,) = telemetry.points("messaging.client.consumed.messages")
    assert consumed.value == 1
    assert dict(consumed.attributes)["messaging.consumer.group.name"] == group
    (operation,) = telemetry.points("messaging.client.operation.duration")
    assert operation.count == 1
    (processing,) = telemetry.points("messaging.process.duration")
    assert processing.count == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", BROKERS)
async def test_publish_many_is_one_span_that_every_message_continues(
    kind: str, backend_on: OpenBackend, telemetry: Telemetry
) -> None:
    key, group = unique("otel-many"), unique("group")
    async with backend_on(kind, [key]) as backend:
        await backend.publish_many(key, [{"n": n} for n in range(3)])
        handled = await consume(backend, key, group, 3)
    assert sorted(payload["n"] for payload, _ in handled) == [0, 1, 2]
    (publish,) = telemetry.spans(f"publish {key}")
    assert publish.context is not None
    assert (publish.attributes or {})["messaging.batch.message_count"] == 3
    processed = telemetry.spans(f"process {key}")
    assert len(processed) == 3
    for span in processed:
        assert span.parent is not None
        assert span.parent.span_id == publish.context.span_id
    (sent,) = telemetry.points("messaging.client.sent.messages")
    assert sent.value == 3


PROGRAM = textwrap.dedent(
    """
    # A plain abe program: nothing here knows about OpenTelemetry.
    import asyncio
    import sys

    from abe import AsyncLoopConsumer, load_backend


    async def main(key: str) -> None:
        async with load_backend() as backend:
            try:
                await backend.publish(key, {"order": 1})
                done = asyncio.Event()

                async def handle(payload: object) -> None:
                    done.set()

                consumer = AsyncLoopConsumer(backend, "otel-auto", keys=key)
                worker = asyncio.ensure_future(consumer.run(handle))
                await asyncio.wait_for(done.wait(), 60)
                await consumer.shutdown()
                await worker
            finally:
                await backend.delete_keys(key)


    asyncio.run(main(sys.argv[1]))
    """
)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in `text` (the console exporters print them in a row)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index = text.find("{", index + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        index = text.find("{", end)
    return found


def _metric_names(value: Any) -> set[str]:
    """The `name` of every metric in the console metric exporter's JSON."""
    names: set[str] = set()
    if isinstance(value, dict):
        if "data" in value and isinstance(value.get("name"), str):
            names.add(value["name"])
        for item in value.values():
            names |= _metric_names(item)
    elif isinstance(value, list):
        for item in value:
            names |= _metric_names(item)
    return names


@pytest.mark.parametrize("kind", BROKERS)
def test_opentelemetry_instrument_traces_an_unchanged_program(
    kind: str,
    tmp_path: Path,
    broker_env: Callable[[str], dict[str, str]],
    clean_environ: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    program = tmp_path / "worker.py"
    program.write_text(PROGRAM)
    key = unique("otel-auto")
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = clean_environ({**broker_env(kind), "OTEL_SERVICE_NAME": "worker"})
    done = subprocess.run(
        [
            str(instrument),
            "--traces_exporter",
            "console",
            "--metrics_exporter",
            "console",
            "--logs_exporter",
            "none",
            sys.executable,
            str(program),
            key,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    objects = _json_objects(done.stdout)
    spans = {span["name"]: span for span in objects if "context" in span and "kind" in span}
    publish, process = spans[f"publish {key}"], spans[f"process {key}"]
    assert publish["kind"] == "SpanKind.PRODUCER"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == publish["context"]["trace_id"]
    assert process["parent_id"] == publish["context"]["span_id"]
    assert [link["context"]["span_id"] for link in process["links"]] == [
        publish["context"]["span_id"]
    ]
    assert process["attributes"]["messaging.system"] == SYSTEMS[kind]
    assert process["attributes"]["messaging.consumer.group.name"] == "otel-auto"
    metrics = set().union(*(_metric_names(value) for value in objects))
    assert {
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.client.operation.duration",
        "messaging.process.duration",
    } <= metrics, metrics
