"""Middleware around publishing and handling: order, headers, ids and exceptions."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from abe import AsyncLoopConsumer, Delivery, MemoryBackend
from abe.errors import PayloadError
from abe.middleware import HandleNext, Middleware, Publication, PublishNext, install, uninstall
from abe.testing.helpers import next_delivery

correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation", default=None
)


class Recorder(Middleware):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def publish(self, publication: Publication, call_next: PublishNext) -> None:
        self.seen.append(f"{self.name}:publish:{publication.key}:{len(publication.payloads)}")
        publication.headers.setdefault("correlation-id", f"from-{self.name}")
        await call_next(publication)

    async def handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        self.seen.append(f"{self.name}:handle:{delivery.headers.get('correlation-id')}")
        token = correlation.set(delivery.headers.get("correlation-id"))
        try:
            await call_next(delivery)
        except Exception as exc:
            self.seen.append(f"{self.name}:raised:{type(exc).__name__}")
            raise
        finally:
            correlation.reset(token)


async def _run(consumer: AsyncLoopConsumer, handler: Any, until: asyncio.Event) -> None:
    task = asyncio.ensure_future(consumer.run(handler))
    try:
        await asyncio.wait_for(until.wait(), 10)
    finally:
        await consumer.shutdown()
        await task


@pytest.mark.asyncio
async def test_process_backend_and_consumer_middleware_run_in_that_order() -> None:
    seen: list[str] = []
    process, backend_level, consumer_level = (
        Recorder("process", seen),
        Recorder("backend", seen),
        Recorder("consumer", seen),
    )
    install(process)
    try:
        backend = MemoryBackend()
        backend.middleware.append(backend_level)
        await backend.publish("orders", {"n": 1})
        done = asyncio.Event()
        handled: list[str | None] = []

        async def handler(payload: dict[str, Any]) -> None:
            handled.append(correlation.get())
            done.set()

        consumer = AsyncLoopConsumer(backend, "g", keys="orders", middleware=[consumer_level])
        await _run(consumer, handler, done)
    finally:
        uninstall(process)
    assert seen == [
        "process:publish:orders:1",
        "backend:publish:orders:1",
        "process:handle:from-process",
        "backend:handle:from-process",
        "consumer:handle:from-process",
    ]
    assert handled == ["from-process"]  # the context a middleware set reaches the handler


@pytest.mark.asyncio
async def test_a_handlers_exception_passes_out_through_handle_and_is_then_retried() -> None:
    seen: list[str] = []
    backend = MemoryBackend()
    await backend.publish("orders", {"n": 1})
    attempts: list[int] = []
    done = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        done.set()

    consumer = AsyncLoopConsumer(
        backend, "g", keys="orders", retry_delay=0.01, middleware=[Recorder("m", seen)]
    )
    await _run(consumer, handler, done)
    assert "m:raised:RuntimeError" in seen
    assert consumer.stats.retried == 1
    assert consumer.stats.processed == 1


@pytest.mark.asyncio
async def test_publish_many_goes_through_once_with_an_id_per_payload() -> None:
    publications: list[Publication] = []

    class Keep(Middleware):
        async def publish(self, publication: Publication, call_next: PublishNext) -> None:
            publications.append(publication)
            await call_next(publication)

    backend = MemoryBackend()
    backend.middleware.append(Keep())
    await backend.publish_many("k", [{"n": 1}, {"n": 2}], message_ids=["a-1", "a-2"])
    (publication,) = publications
    assert publication.many
    assert publication.message_ids == ["a-1", "a-2"]
    assert publication.backend == "memory"
    async with backend.subscribe(group="g", keys="k") as subscription:
        first = await next_delivery(subscription, 5)
        assert first.id == "a-1"
        await first.ack()


@pytest.mark.asyncio
async def test_headers_a_middleware_adds_are_checked_like_any_other() -> None:
    class Bad(Middleware):
        async def publish(self, publication: Publication, call_next: PublishNext) -> None:
            publication.headers["Nats-Rollup"] = "all"
            await call_next(publication)

    backend = MemoryBackend()
    backend.middleware.append(Bad())
    with pytest.raises(PayloadError, match="Nats-Rollup"):
        await backend.publish("k", {"n": 1})
    assert backend.broker.messages("k") == []


@pytest.mark.asyncio
async def test_a_middleware_can_refuse_to_publish() -> None:
    class Gate(Middleware):
        async def publish(self, publication: Publication, call_next: PublishNext) -> None:
            if publication.key != "blocked":
                await call_next(publication)

    backend = MemoryBackend()
    backend.middleware.append(Gate())
    await backend.publish("blocked", {"n": 1})
    await backend.publish("open", {"n": 2})
    assert backend.broker.messages("blocked") == []
    assert backend.broker.messages("open") == [{"n": 2}]


@pytest.mark.asyncio
async def test_caller_ids_travel_to_every_delivery_and_bad_ids_are_refused() -> None:
    backend = MemoryBackend()
    await backend.publish("k", {"n": 1}, message_id="order-1001")
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, 5)
        assert delivery.id == "order-1001"
        await delivery.ack()
    for bad in ("", "has space", "x" * 129, "ünï"):
        with pytest.raises(PayloadError, match="message id"):
            await backend.publish("k", {"n": 2}, message_id=bad)
    with pytest.raises(ValueError, match="2 ids for 1 payloads"):
        await backend.publish_many("k", [{"n": 3}], message_ids=["a", "b"])


@pytest.mark.asyncio
async def test_middleware_installed_while_a_consumer_runs_applies_from_its_next_message() -> None:
    seen: list[str] = []
    backend = MemoryBackend()
    handled = asyncio.Event()
    count = 0

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        handled.set()

    consumer = AsyncLoopConsumer(backend, "g", keys="k")
    running = asyncio.ensure_future(consumer.run(handler))
    late = Recorder("late", seen)
    try:
        await backend.publish("k", {"n": 1})
        await asyncio.wait_for(handled.wait(), 5)
        assert seen == []
        install(late)
        handled.clear()
        await backend.publish("k", {"n": 2})
        await asyncio.wait_for(handled.wait(), 5)
        assert seen == ["late:publish:k:1", "late:handle:from-late"]
    finally:
        uninstall(late)
        await consumer.shutdown()
        await running


@pytest.mark.asyncio
async def test_a_delivery_names_its_backend_and_a_publication_whether_headers_travel() -> None:
    publications: list[Publication] = []

    class Keep(Middleware):
        async def publish(self, publication: Publication, call_next: PublishNext) -> None:
            publications.append(publication)
            await call_next(publication)

    backend = MemoryBackend()
    backend.middleware.append(Keep())
    await backend.publish("k", {"n": 1})
    assert publications[0].carries_headers
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, 5)
        assert (delivery.backend, delivery.group) == ("memory", "g")
        await delivery.ack()
