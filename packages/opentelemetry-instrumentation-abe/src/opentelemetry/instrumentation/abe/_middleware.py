"""The abe middleware that traces and measures: one producer span per publish, one consumer
span per handler call, W3C trace context in the message headers, messaging metrics.

Names and values follow the OpenTelemetry messaging semantic conventions (1.28 and later).
"""

from __future__ import annotations

from timeit import default_timer

from opentelemetry import propagate, trace
from opentelemetry.metrics import Meter
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
    MessagingSystemValues,
)
from opentelemetry.semconv._incubating.metrics.messaging_metrics import (
    MESSAGING_CLIENT_OPERATION_DURATION,
    MESSAGING_PROCESS_DURATION,
    create_messaging_client_consumed_messages,
    create_messaging_client_sent_messages,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from abe import Delivery
from abe.backends.message_queue.base.headers import check_user_headers
from abe.errors import PayloadError
from abe.middleware import HandleNext, Middleware, Publication, PublishNext

__all__ = ["TelemetryMiddleware", "error_type", "messaging_system"]

PUBLISH = "publish"
"""`messaging.operation.name` of `publish` and `publish_many` (and the start of the span name)."""
PROCESS = "process"
"""`messaging.operation.name` of a handler call (and the start of the span name)."""
SEND = MessagingOperationTypeValues.SEND.value
PROCESS_TYPE = MessagingOperationTypeValues.PROCESS.value

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
"""The histogram boundaries, in seconds, that the conventions advise for messaging durations."""

_SYSTEMS = {"sqs": MessagingSystemValues.AWS_SQS.value, "kafka": MessagingSystemValues.KAFKA.value}
"""abe backend names whose `messaging.system` the conventions spell otherwise."""

_TRACE_ONLY = ("traceparent", "tracestate")
"""What is kept of the injected context when everything would not fit in the headers."""

Attributes = dict[str, AttributeValue]


def messaging_system(backend: str) -> str:
    """`messaging.system` for an abe backend name: the conventions' value, else the name."""
    return _SYSTEMS.get(backend, backend)


def error_type(exc: BaseException) -> str:
    """`error.type` for an exception: its class's fully qualified name (builtins bare)."""
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _fail(span: Span, attributes: Attributes, exc: BaseException) -> None:
    """Mark a failed operation on its span and in its metric attributes."""
    kind = error_type(exc)
    attributes[ERROR_TYPE] = kind
    if span.is_recording():
        span.set_attribute(ERROR_TYPE, kind)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class TelemetryMiddleware(Middleware):
    """Spans and metrics around every publish and handler call; inert once `active` is False.

    `active` lets `AbeInstrumentor.uninstrument()` switch off consumers that are already
    running, whose middleware chain was fixed when they started.
    """

    def __init__(self, tracer: Tracer, meter: Meter) -> None:
        self.tracer = tracer
        self.active = True
        self.sent = create_messaging_client_sent_messages(meter)
        self.consumed = create_messaging_client_consumed_messages(meter)
        self.operation_duration = meter.create_histogram(
            name=MESSAGING_CLIENT_OPERATION_DURATION,
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer "
            "client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.process_duration = meter.create_histogram(
            name=MESSAGING_PROCESS_DURATION,
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    async def publish(self, publication: Publication, call_next: PublishNext) -> None:
        """A producer span `publish <key>` around the send, its context in the headers."""
        if not self.active:
            await call_next(publication)
            return
        count = len(publication.payloads)
        attributes: Attributes = {
            MESSAGING_SYSTEM: messaging_system(publication.backend),
            MESSAGING_DESTINATION_NAME: publication.key,
            MESSAGING_OPERATION_NAME: PUBLISH,
            MESSAGING_OPERATION_TYPE: SEND,
        }
        on_span = dict(attributes)
        if publication.many:
            on_span[MESSAGING_BATCH_MESSAGE_COUNT] = count
        elif publication.message_ids:
            on_span[MESSAGING_MESSAGE_ID] = publication.message_ids[0]
        start = default_timer()
        with self.tracer.start_as_current_span(
            f"{PUBLISH} {publication.key}",
            kind=SpanKind.PRODUCER,
            attributes=on_span,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if publication.carries_headers:  # a protocol-only backend refuses any header
                _inject(publication.headers)
            try:
                await call_next(publication)
            except BaseException as exc:
                _fail(span, attributes, exc)
                raise
            finally:
                self.operation_duration.record(default_timer() - start, attributes)
                self.sent.add(count, attributes)

    async def handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """A consumer span `process <key>` around the handler, in the publisher's trace."""
        if not self.active:
            await call_next(delivery)
            return
        parent = propagate.extract(delivery.headers)
        sender = trace.get_current_span(parent).get_span_context()
        attributes: Attributes = {
            MESSAGING_SYSTEM: messaging_system(delivery.backend),
            MESSAGING_DESTINATION_NAME: delivery.key,
            MESSAGING_CONSUMER_GROUP_NAME: delivery.group,
            MESSAGING_OPERATION_NAME: PROCESS,
            MESSAGING_OPERATION_TYPE: PROCESS_TYPE,
        }
        self.consumed.add(1, attributes)
        start = default_timer()
        with self.tracer.start_as_current_span(
            f"{PROCESS} {delivery.key}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(sender)] if sender.is_valid else None,
            attributes={**attributes, MESSAGING_MESSAGE_ID: delivery.id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await call_next(delivery)
            except BaseException as exc:
                _fail(span, attributes, exc)
                raise
            finally:
                self.process_duration.record(default_timer() - start, attributes)


def _inject(headers: dict[str, str]) -> None:
    """Add the current context (W3C trace context, baggage...) to `headers` if it fits.

    The global propagator decides what is written. Whatever would break abe's header
    rules (4 KiB at most, in total) is left out, so tracing never makes a publish fail:
    first everything, then the trace context alone, then nothing.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return
    trace_only = {name: value for name, value in carrier.items() if name in _TRACE_ONLY}
    for candidate in (carrier, trace_only):
        if not candidate:
            continue
        try:
            check_user_headers({**headers, **candidate})
        except PayloadError:
            continue
        headers.update(candidate)
        return
