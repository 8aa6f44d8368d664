"""Prometheus metrics of `abe run`, through prometheus-client (the `abe-core[metrics]` extra).

Only `abe run --metrics-port` imports this module. A worker counts what its consumer does
with a middleware (handler calls, their duration, messages in flight) and the consumer's
`on_settled` (acked, retried, dead-lettered). Alone, a worker serves the process's default
registry, so an application's own prometheus-client metrics appear beside abe's. Under
`--workers`, each worker writes to the directory named by PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode) and the supervisor serves the sum of all.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from abe.backends.message_queue.base.delivery import Delivery
from abe.middleware import HandleNext, Middleware

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROCESS_VARIABLE",
    "ConsumerMetrics",
    "SupervisorMetrics",
    "exposition",
]

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client's multiprocess mode keeps each process's values."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that `generate_latest` writes."""

_LABELS = ("key", "group")

# prometheus-client leaves these two unannotated; typed once here for mypy --strict.
_multiprocess_collector: Callable[..., object] = multiprocess.MultiProcessCollector
_mark_process_dead: Callable[[int, str], object] = multiprocess.mark_process_dead


class ConsumerMetrics(Middleware):
    """Counts and times every handler call, and each delivery's outcome, by key and group.

    Use one per process (`ConsumerMetrics.for_process()`): prometheus-client allows each
    metric name once in a registry.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.consumed = Counter(
            "abe_messages_consumed",
            "Messages handed to the handler (each attempt counts).",
            _LABELS,
            registry=registry,
        )
        self.acked = Counter(
            "abe_messages_acked",
            "Messages acknowledged after the handler returned.",
            _LABELS,
            registry=registry,
        )
        self.retried = Counter(
            "abe_messages_retried",
            "Messages given back to be delivered again (the handler raised, or was cancelled).",
            _LABELS,
            registry=registry,
        )
        self.dead_lettered = Counter(
            "abe_messages_dead_lettered",
            "Messages moved to their dead-letter key.",
            _LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            "abe_handler_duration_seconds",
            "How long the handler ran, whether it returned or raised.",
            _LABELS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "abe_messages_in_flight",
            "Handlers running now.",
            _LABELS,
            registry=registry,
            multiprocess_mode="livesum",
        )

    @staticmethod
    @functools.cache
    def for_process() -> ConsumerMetrics:
        """The process's metrics, registered in prometheus-client's default registry once."""
        return ConsumerMetrics()

    async def handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """Count the call, keep the in-flight gauge, and time the handler."""
        labels = (delivery.key, delivery.group)
        self.consumed.labels(*labels).inc()
        in_flight = self.in_flight.labels(*labels)
        in_flight.inc()
        started = time.perf_counter()
        try:
            await call_next(delivery)
        finally:
            self.duration.labels(*labels).observe(time.perf_counter() - started)
            in_flight.dec()

    def settled(self, delivery: Delivery) -> None:
        """Count a settled delivery by its outcome (the consumer's `on_settled`)."""
        counter = {"ack": self.acked, "nack": self.retried, "dead-letter": self.dead_lettered}
        chosen = counter.get(delivery.outcome or "")
        if chosen is not None:
            chosen.labels(delivery.key, delivery.group).inc()


def exposition() -> bytes:
    """This process's metrics in the text format (all processes' in multiprocess mode)."""
    directory = os.environ.get(MULTIPROCESS_VARIABLE)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    _multiprocess_collector(registry, path=directory)
    return generate_latest(registry)


class SupervisorMetrics:
    """The supervisor's view: every worker's metrics summed, and its own worker counts."""

    def __init__(
        self, directory: str, workers: Callable[[], int], restarts: Callable[[], int]
    ) -> None:
        self.directory = directory
        self._registry = CollectorRegistry()
        _multiprocess_collector(self._registry, path=directory)
        self._registry.register(_SupervisorCollector(workers, restarts))

    def render(self) -> bytes:
        """Every worker's metrics, summed, with the supervisor's own."""
        return generate_latest(self._registry)

    def worker_exited(self, pid: int) -> None:
        """Drop a dead worker's in-flight gauge; its counters stay in the sums."""
        _mark_process_dead(pid, self.directory)


class _SupervisorCollector:
    def __init__(self, workers: Callable[[], int], restarts: Callable[[], int]) -> None:
        self._workers = workers
        self._restarts = restarts

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "abe_run_workers", "Worker processes running under this supervisor.", self._workers()
        )
        yield CounterMetricFamily(
            "abe_run_worker_restarts",
            "Worker processes the supervisor started again after one ended unasked.",
            self._restarts(),
        )
