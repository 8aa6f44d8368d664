"""What the instrumentation costs: a memory-backend publish + consume loop, with and without it.

Not part of any test run. Each round publishes N messages one `publish` at a time, then
an AsyncLoopConsumer handles all N; rounds alternate between uninstrumented and
instrumented (SDK TracerProvider with an in-memory exporter behind a SimpleSpanProcessor,
MeterProvider with an in-memory reader), and the median of each is compared.

    python packages/opentelemetry-instrumentation-abe/bench/overhead.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from opentelemetry.instrumentation.abe import AbeInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from abe import AsyncLoopConsumer, MemoryBackend


async def one_round(messages: int) -> float:
    """Seconds to publish `messages` and handle them all, on a fresh memory backend."""
    backend = MemoryBackend()
    handled = 0
    done = asyncio.Event()

    async def handler(payload: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == messages:
            done.set()

    start = time.perf_counter()
    for number in range(messages):
        await backend.publish("orders", {"n": number})
    consumer = AsyncLoopConsumer(backend, "billing", keys="orders", concurrency=8)
    worker = asyncio.ensure_future(consumer.run(handler))
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.shutdown()
    await worker
    await backend.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentor = AbeInstrumentor()
    asyncio.run(one_round(min(args.messages, 200)))  # warm-up: imports, caches
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(asyncio.run(one_round(args.messages)))
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        try:
            on.append(asyncio.run(one_round(args.messages)))
        finally:
            instrumentor.uninstrument()
        spans = len(exporter.get_finished_spans())
        exporter.clear()
        assert spans == 2 * args.messages, f"expected a span per publish and per handler: {spans}"
    plain, traced = statistics.median(off), statistics.median(on)
    print(f"{args.messages} messages, median of {args.rounds} rounds")
    for label, seconds in (("without instrumentation", plain), ("with instrumentation", traced)):
        per_message = seconds / args.messages * 1e6
        print(f"  {label:<24} {seconds * 1000:8.1f} ms  ({per_message:.1f} µs/msg)")
    extra = (traced - plain) / args.messages * 1e6
    print(f"  ratio: {traced / plain:.2f}x  (+{extra:.1f} µs/msg)")


if __name__ == "__main__":
    main()
