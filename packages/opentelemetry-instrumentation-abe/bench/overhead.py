"""What the instrumentation costs: publish + consume, or a worker draining a backlog, with and
without it.

Not part of any test run. By default each round publishes N messages one `publish` at a
time on the memory backend, then an AsyncLoopConsumer handles all N. With `--drain`, N
messages are published first (with `publish_many`, not measured) on the backend
`--backend` names (configured from the environment as `load_backend` does), and the round
measures an AsyncLoopConsumer (`--concurrency`) draining them: (N - 1) / (last handled -
first handled), so joining the group is left out. Rounds alternate between uninstrumented
and instrumented (SDK TracerProvider with an in-memory exporter behind a
SimpleSpanProcessor, MeterProvider with an in-memory reader); medians are compared.

    python packages/opentelemetry-instrumentation-abe/bench/overhead.py [--messages 2000]
    python packages/opentelemetry-instrumentation-abe/bench/overhead.py --drain --backend redis
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from opentelemetry.instrumentation.abe import AbeInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from abe import AsyncLoopConsumer, MemoryBackend, load_backend


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


async def drain_round(messages: int, backend_name: str, concurrency: int) -> float:
    """Seconds per message for a consumer draining a backlog of `messages` on a new key."""
    key, seen = f"otel-drain-{uuid.uuid4().hex[:8]}", []
    done = asyncio.Event()
    async with load_backend(backend_name) as backend:
        for start in range(0, messages, 500):
            await backend.publish_many(key, [{"n": n} for n in range(start, start + 500)])

        async def handler(payload: Any) -> None:
            seen.append(time.perf_counter())
            if len(seen) == messages:
                done.set()

        consumer = AsyncLoopConsumer(backend, "otel", keys=key, concurrency=concurrency)
        worker = asyncio.ensure_future(consumer.run(handler))
        await done.wait()
        await consumer.shutdown()
        await worker
        await backend.delete_keys([key])
    return (seen[-1] - seen[0]) / (messages - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", action="store_true", help="measure draining a backlog")
    parser.add_argument("--backend", default="memory", help="the backend, with --drain")
    parser.add_argument("--concurrency", type=int, default=16, help="handlers, with --drain")
    parser.add_argument(
        "--batch-spans",
        action="store_true",
        help="export spans through a BatchSpanProcessor, as deployments do (default: Simple)",
    )
    args = parser.parse_args()
    if args.messages % 500 and args.drain:
        parser.error("--messages must be a multiple of 500 with --drain")

    def one(messages: int) -> float:
        if args.drain:
            seconds = drain_round(messages, args.backend, args.concurrency)
            return asyncio.run(seconds) * messages
        return asyncio.run(one_round(messages))

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    processor = BatchSpanProcessor if args.batch_spans else SimpleSpanProcessor
    tracer_provider.add_span_processor(processor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentor = AbeInstrumentor()
    one(500)  # warm-up: imports, caches, connections
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(one(args.messages))
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        try:
            on.append(one(args.messages))
        finally:
            instrumentor.uninstrument()
        tracer_provider.force_flush()
        spans = len(exporter.get_finished_spans())
        exporter.clear()
        # a span per handler call, and one per publish (with --drain, per publish_many call)
        expected = args.messages + (args.messages // 500 if args.drain else args.messages)
        assert spans == expected, f"expected {expected} spans, got {spans}"
    plain, traced = statistics.median(off), statistics.median(on)
    what = f"drain on {args.backend}, concurrency {args.concurrency}" if args.drain else "memory"
    spans_by = "BatchSpanProcessor" if args.batch_spans else "SimpleSpanProcessor"
    print(f"{args.messages} messages ({what}; {spans_by}), median of {args.rounds} rounds")
    for label, seconds in (("without instrumentation", plain), ("with instrumentation", traced)):
        per_message = seconds / args.messages * 1e6
        print(f"  {label:<24} {seconds * 1000:8.1f} ms  ({per_message:.1f} µs/msg)")
    extra = (traced - plain) / args.messages * 1e6
    print(f"  ratio: {traced / plain:.2f}x  (+{extra:.1f} µs/msg)")


if __name__ == "__main__":
    main()
