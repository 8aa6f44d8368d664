"""OpenTelemetry instrumentation for abe: traces and messaging metrics for every broker.

Every `publish` and `publish_many` gets a producer span `publish <key>` and carries its
W3C trace context in the message headers; every handler call of `AsyncLoopConsumer`
runs inside a consumer span `process <key>` that continues the publisher's trace and
links to it. Metrics: `messaging.client.sent.messages`,
`messaging.client.consumed.messages`, `messaging.process.duration` and
`messaging.client.operation.duration`.

    from opentelemetry.instrumentation.abe import AbeInstrumentor

    AbeInstrumentor().instrument()  # or run under `opentelemetry-instrument`

Instrument before consumers start: a running consumer keeps the middleware it started
with (uninstrumenting still switches its telemetry off).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.abe._middleware import TelemetryMiddleware
from opentelemetry.instrumentation.abe.package import _instruments
from opentelemetry.instrumentation.abe.version import __version__
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.semconv.schemas import Schemas

from abe.middleware import install, uninstall

__all__ = ["AbeInstrumentor", "__version__"]

_SCHEMA_URL = Schemas.V1_28_0.value
"""The semantic conventions the telemetry follows."""


class AbeInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and measures abe's publishes and handler calls through one core middleware.

    `instrument(tracer_provider=..., meter_provider=...)` installs it for the whole
    process (the global providers when none are given); `uninstrument()` removes it.
    """

    _middleware: TelemetryMiddleware | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The abe-core versions this instruments."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        """Install one telemetry middleware around every publish and handler call."""
        tracer = trace.get_tracer(
            __name__, __version__, kwargs.get("tracer_provider"), schema_url=_SCHEMA_URL
        )
        meter = metrics.get_meter(
            __name__, __version__, kwargs.get("meter_provider"), schema_url=_SCHEMA_URL
        )
        middleware = TelemetryMiddleware(tracer, meter)
        self._middleware = middleware
        install(middleware)

    def _uninstrument(self, **kwargs: Any) -> None:
        """Remove the middleware, and switch it off in consumers that are still running."""
        middleware, self._middleware = self._middleware, None
        if middleware is not None:
            middleware.active = False
            uninstall(middleware)
