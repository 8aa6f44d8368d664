"""AsyncLoopConsumer: ack after success, retry with backoff, dead letters, bounded concurrency,
graceful shutdown, and the delivery a handler can ask about.

The memory backend's redelivery timeout is 30 s here: a message that comes back within a
test's few seconds was given back by the consumer, not recovered by a lease running out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import pytest

from abe.backends.message_queue import consumer as consumer_module
from abe.backends.message_queue.base import Receiver
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.consumer import (
    HELD_WORK,
    AsyncLoopConsumer,
    ConsumerStats,
    _Pace,
    current_delivery,
)
from abe.backends.message_queue.memory import MemoryBackend, MemoryBroker, MemorySettings
from abe.errors import AuthenticationError, BackendUnavailableError
from abe.testing.helpers import next_delivery, receive

WAIT = 5.0
KEY = "orders"
GROUP = "workers"


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def backend(broker: MemoryBroker) -> MemoryBackend:
    return MemoryBackend(MemorySettings(redelivery_timeout=30), broker=broker)


def start(consumer: AsyncLoopConsumer, handler: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(consumer.run(handler))


async def stop(consumer: AsyncLoopConsumer, running: asyncio.Task[None]) -> None:
    await asyncio.wait_for(consumer.shutdown(), WAIT)
    await asyncio.wait_for(running, WAIT)


async def spin(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def dead_letter_of(backend: MemoryBackend, key: str = KEY) -> Delivery:
    """The first message on `key`'s dead-letter key, waiting for it to arrive."""
    async with backend.subscribe(group="inspector", keys=f"{key}-dlq") as letters:
        letter = await next_delivery(letters, WAIT)
        await letter.ack()
    return letter


class Counter:
    """Counts handler calls and sets `reached` once `target` calls have finished."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.payloads: list[dict[str, Any]] = []
        self.reached = asyncio.Event()

    async def __call__(self, payload: dict[str, Any]) -> None:
        self.payloads.append(payload)
        if len(self.payloads) >= self.target:
            self.reached.set()


# ---- success and retries ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_handled_message_is_acknowledged(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish_many(KEY, [{"i": i} for i in range(3)])
    handler = Counter(3)
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, handler)
    await asyncio.wait_for(handler.reached.wait(), WAIT)
    await stop(consumer, running)
    assert handler.payloads == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert broker.pending(KEY, GROUP) == 0
    assert consumer.stats == ConsumerStats(processed=3, retried=0, dead_lettered=0, in_flight=0)


class RecordingConsumer(AsyncLoopConsumer):
    """Remembers every retry delay it chose."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delays: list[float] = []

    def retry_delay_for(self, attempt: int) -> float:
        delay = super().retry_delay_for(attempt)
        self.delays.append(delay)
        return delay


@pytest.mark.asyncio
async def test_a_failing_handler_is_retried_with_growing_delays_then_dead_lettered(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish(KEY, {"order": 7}, headers={"tenant": "acme"})
    attempts: list[tuple[int, float]] = []

    async def handler(payload: dict[str, Any]) -> None:
        attempt = current_delivery().attempt
        attempts.append((attempt, time.monotonic()))
        raise RuntimeError(f"boom on attempt {attempt}")

    consumer = RecordingConsumer(backend, GROUP, keys=KEY, max_attempts=4, retry_delay=0.1)
    running = start(consumer, handler)
    letter = await dead_letter_of(backend)
    await stop(consumer, running)

    assert [attempt for attempt, _ in attempts] == [1, 2, 3, 4]
    assert len(consumer.delays) == 3
    for index, delay in enumerate(consumer.delays):
        base = 0.1 * 2**index
        assert 0.9 * base <= delay <= base, "the delay is not the doubling backoff with jitter"
        gap = attempts[index + 1][1] - attempts[index][1]
        assert gap >= delay, f"attempt {index + 2} came {gap:.3f}s after, before {delay:.3f}s"
        assert gap < delay + 0.5, f"attempt {index + 2} came {gap:.3f}s after, not {delay:.3f}s"
    assert consumer.delays == sorted(consumer.delays)

    assert letter.payload == {"order": 7}
    assert letter.headers["abe-error"] == "RuntimeError: boom on attempt 4"
    assert letter.headers["abe-attempts"] == "4"
    assert letter.headers["abe-original-key"] == KEY
    assert letter.headers["tenant"] == "acme"
    assert broker.pending(KEY, GROUP) == 0, "the original is still waiting to be delivered"
    assert consumer.stats == ConsumerStats(processed=0, retried=3, dead_lettered=1, in_flight=0)


@pytest.mark.asyncio
async def test_max_attempts_one_dead_letters_the_first_failure(backend: MemoryBackend) -> None:
    await backend.publish(KEY, {"i": 1})
    calls: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        calls.append(current_delivery().attempt)
        raise ValueError("bad order")

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, max_attempts=1)
    running = start(consumer, handler)
    letter = await dead_letter_of(backend)
    await stop(consumer, running)
    assert calls == [1]
    assert letter.headers["abe-error"] == "ValueError: bad order"
    assert letter.headers["abe-attempts"] == "1"


@pytest.mark.asyncio
async def test_a_message_already_past_max_attempts_is_dead_lettered_unhandled(
    backend: MemoryBackend, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.publish(KEY, {"i": 1})
    async with backend.subscribe(group=GROUP, keys=KEY) as earlier:
        for _ in range(2):  # two deliveries that never finished
            await (await next_delivery(earlier, WAIT)).nack()
    calls: list[dict[str, Any]] = []

    async def handler(payload: dict[str, Any]) -> None:
        calls.append(payload)

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, max_attempts=2)
    running = start(consumer, handler)
    letter = await dead_letter_of(backend)
    await stop(consumer, running)
    assert calls == []
    assert letter.payload == {"i": 1}
    assert letter.headers["abe-attempts"] == "3"
    assert letter.headers["abe-error"] == "delivered 3 times without finishing"
    assert broker.pending(KEY, GROUP) == 0
    assert consumer.stats.dead_lettered == 1
    assert "was delivered 3 times without finishing (max_attempts 2)" in caplog.text


def test_retry_delay_doubles_with_jitter_and_is_capped(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, keys=KEY, retry_delay=1.0, max_retry_delay=5.0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0), (200, 5.0)]:
        delays = [consumer.retry_delay_for(attempt) for _ in range(200)]
        assert all(0.9 * base <= delay <= base for delay in delays), (attempt, delays)
        assert len(set(delays)) > 1, "no jitter"


def test_zero_retry_delay_retries_at_once(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, keys=KEY, retry_delay=0.0)
    assert consumer.retry_delay_for(3) == 0.0


# ---- concurrency -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_at_most_concurrency_handlers_run_at_once(backend: MemoryBackend) -> None:
    await backend.publish_many(KEY, [{"i": i} for i in range(20)])
    running_now = 0
    peak = 0
    finished = 0
    gate = asyncio.Event()
    three_running = asyncio.Event()
    all_done = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal running_now, peak, finished
        running_now += 1
        peak = max(peak, running_now)
        if running_now == 3:
            three_running.set()
        try:
            await gate.wait()
        finally:
            running_now -= 1
        finished += 1
        if finished == 20:
            all_done.set()

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, concurrency=3)
    running = start(consumer, handler)
    await asyncio.wait_for(three_running.wait(), WAIT)
    await spin()
    assert peak == 3
    assert consumer.stats.in_flight == 3
    assert backend.held_messages <= 12, "before timing its handlers it holds 4 per slot"
    gate.set()
    await asyncio.wait_for(all_done.wait(), WAIT)
    await stop(consumer, running)
    assert peak == 3
    assert consumer.stats.processed == 20


def test_prefetch_is_at_least_concurrency(backend: MemoryBackend) -> None:
    assert AsyncLoopConsumer(backend, keys=KEY, concurrency=3).prefetch == 100  # ABE_MQ_PREFETCH
    assert AsyncLoopConsumer(backend, keys=KEY, concurrency=3, prefetch=1).prefetch == 3
    assert AsyncLoopConsumer(backend, keys=KEY, concurrency=3, prefetch=50).prefetch == 50
    small = MemoryBackend(MemorySettings(prefetch=2), broker=MemoryBroker())
    assert AsyncLoopConsumer(small, keys=KEY, concurrency=3).prefetch == 12  # 4 per slot
    assert AsyncLoopConsumer(backend, keys=KEY, concurrency=40).prefetch == 160


def test_default_window_holds_about_held_work_seconds_of_handling() -> None:
    pace = _Pace(start=8)
    assert pace.window(concurrency=2, bound=100) == 8, "untimed: the starting window"
    pace.busy, pace.handled = 10 * 1.0, 10  # handlers of a second each: one per slot, +1
    assert pace.window(concurrency=2, bound=100) == 2 + math.ceil(2 * HELD_WORK / 1.0)
    pace.busy, pace.handled = 1000 * 1e-5, 1000  # fast handlers: up to the bound
    assert pace.window(concurrency=2, bound=100) == 100
    pace.busy, pace.handled = 0.0, 5  # too fast to time
    assert pace.window(concurrency=2, bound=100) == 100


@pytest.mark.asyncio
async def test_fast_handlers_get_larger_fetches_within_the_bound(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish_many(KEY, [{"i": i} for i in range(1000)])
    most_held = 0
    counter = Counter(1000)

    async def handler(payload: dict[str, Any]) -> None:
        nonlocal most_held
        most_held = max(most_held, backend.held_messages)
        await counter(payload)

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, prefetch=None)
    running = start(consumer, handler)
    await asyncio.wait_for(counter.reached.wait(), WAIT)
    await stop(consumer, running)
    assert 4 < most_held <= consumer.prefetch == 100


@pytest.mark.asyncio
async def test_slow_handlers_hold_little_more_than_they_run(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "HELD_WORK", 0.001)  # far below one handler's time
    await backend.publish_many(KEY, [{"i": i} for i in range(40)])
    held_late: list[int] = []
    counter = Counter(20)

    async def handler(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # the work itself
        if len(counter.payloads) >= 10:  # timed by then
            held_late.append(backend.held_messages)
        await counter(payload)

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, concurrency=2)
    running = start(consumer, handler)
    await asyncio.wait_for(counter.reached.wait(), WAIT)
    await stop(consumer, running)
    assert held_late, "no message was handled after the handlers were timed"
    assert max(held_late) <= 2 + 1, f"held {max(held_late)} with 2 slow slots"


# ---- shutdown --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_shutdown_lets_running_handlers_finish_and_takes_nothing_new(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish_many(KEY, [{"i": i} for i in range(5)])
    started: list[int] = []
    finished: list[int] = []
    cancelled: list[int] = []
    gate = asyncio.Event()
    both_started = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.append(payload["i"])
        if len(started) == 2:
            both_started.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(payload["i"])
            raise
        finished.append(payload["i"])

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, concurrency=2)
    running = start(consumer, handler)
    await asyncio.wait_for(both_started.wait(), WAIT)
    shutting_down = asyncio.ensure_future(consumer.shutdown())
    await spin()
    assert not shutting_down.done(), "shutdown() returned while handlers were still running"
    still_running = consumer.running
    assert still_running
    gate.set()
    await asyncio.wait_for(shutting_down, WAIT)
    await asyncio.wait_for(running, WAIT)

    assert not consumer.running
    assert cancelled == []
    assert sorted(finished) == sorted(started) == [0, 1]
    assert consumer.stats.processed == 2
    assert broker.pending(KEY, GROUP) == 3, "the finished handlers' messages were not acked"
    async with backend.subscribe(group=GROUP, keys=KEY) as after:
        rest = await receive(after, 3, WAIT)
    assert [(d.payload["i"], d.attempt) for d in rest] == [(2, 1), (3, 1), (4, 1)]


@pytest.mark.asyncio
async def test_shutdown_timeout_cancels_a_stuck_handler_and_gives_its_message_back(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.publish(KEY, {"i": 1})
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, concurrency=2)
    running = start(consumer, handler)
    await asyncio.wait_for(started.wait(), WAIT)
    with caplog.at_level(logging.WARNING, logger="abe.consumer"):
        await asyncio.wait_for(consumer.shutdown(timeout=0.2), WAIT)
    await asyncio.wait_for(running, WAIT)
    assert cancelled.is_set()
    assert consumer.shutdown_timeout == 0.2
    assert consumer.stats.processed == 0
    assert any("still running after 0.2s" in record.getMessage() for record in caplog.records)

    again = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    seen: list[int] = []
    handled = asyncio.Event()

    async def second(payload: dict[str, Any]) -> None:
        seen.append(current_delivery().attempt)
        handled.set()

    rerun = start(again, second)
    await asyncio.wait_for(handled.wait(), WAIT)
    await stop(again, rerun)
    assert seen == [2]


@pytest.mark.asyncio
async def test_shutdown_timeout_also_applies_when_every_slot_is_busy(
    backend: MemoryBackend,
) -> None:
    await backend.publish(KEY, {"i": 1})
    started = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, concurrency=1)
    running = start(consumer, handler)
    await asyncio.wait_for(started.wait(), WAIT)
    try:
        await asyncio.wait_for(consumer.shutdown(timeout=0.2), 1.5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


@pytest.mark.asyncio
async def test_shutdown_right_after_starting_run_stops_it(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, Counter(1))
    await consumer.shutdown()
    try:
        await asyncio.wait_for(asyncio.shield(running), 1.5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


@pytest.mark.asyncio
async def test_cancelling_run_gives_in_flight_messages_back_at_once(
    backend: MemoryBackend,
) -> None:
    await backend.publish(KEY, {"i": 1})
    started = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, handler)
    await asyncio.wait_for(started.wait(), WAIT)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    async with backend.subscribe(group=GROUP, keys=KEY) as after:
        again = await next_delivery(after, 1.5)
    assert again.attempt == 2


@pytest.mark.asyncio
async def test_cancelling_run_cancels_its_handlers(backend: MemoryBackend) -> None:
    await backend.publish(KEY, {"i": 1})
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, handler)
    await asyncio.wait_for(started.wait(), WAIT)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert running.cancelled()
    assert cancelled.is_set()
    assert not consumer.running


@pytest.mark.asyncio
async def test_run_can_be_called_again_after_it_ends(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    for round_number in range(2):
        await backend.publish(KEY, {"round": round_number})
        handler = Counter(1)
        running = start(consumer, handler)
        await asyncio.wait_for(handler.reached.wait(), WAIT)
        await stop(consumer, running)
        assert handler.payloads == [{"round": round_number}]
        assert consumer.stats.processed == 1, "stats are per run()"


@pytest.mark.asyncio
async def test_run_twice_at_once_is_refused(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, Counter(1))
    await spin()
    with pytest.raises(RuntimeError, match="already running"):
        await consumer.run(Counter(1))
    await stop(consumer, running)


@pytest.mark.asyncio
async def test_shutdown_of_a_consumer_that_is_not_running_returns(
    backend: MemoryBackend,
) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    await asyncio.wait_for(consumer.shutdown(), WAIT)
    assert not consumer.running


@pytest.mark.asyncio
async def test_run_returns_when_the_backend_is_closed(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    running = start(consumer, Counter(1))
    await spin()
    assert consumer.running
    await asyncio.wait_for(backend.close(), WAIT)
    await asyncio.wait_for(running, WAIT)
    assert not consumer.running


# ---- the current delivery --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_current_delivery_inside_a_handler(backend: MemoryBackend) -> None:
    await backend.publish(KEY, {"i": 1}, headers={"trace": "t-1"})
    seen: list[tuple[str, str, int, str]] = []
    done = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        delivery = current_delivery()
        seen.append((delivery.key, delivery.id, delivery.attempt, delivery.headers["trace"]))
        assert delivery.payload is payload
        if delivery.attempt == 1:
            raise RuntimeError("try again")
        done.set()

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, retry_delay=0.0)
    running = start(consumer, handler)
    await asyncio.wait_for(done.wait(), WAIT)
    await stop(consumer, running)
    (key, first_id, _, trace), (_, second_id, _, _) = seen
    assert [attempt for *_, attempt, _ in seen] == [1, 2]
    assert (key, trace) == (KEY, "t-1")
    assert first_id == second_id
    assert len(first_id) > 16
    with pytest.raises(LookupError, match="only available inside a consumer handler"):
        current_delivery()


def test_current_delivery_outside_a_handler_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="only available inside a consumer handler"):
        current_delivery()


# ---- construction and stats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1, got 0"),
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"retry_delay": -1.0}, "need 0 <= retry_delay <= max_retry_delay"),
        ({"retry_delay": 10.0, "max_retry_delay": 5.0}, "need 0 <= retry_delay"),
        ({"shutdown_timeout": -1.0}, "shutdown_timeout must be zero or more seconds"),
    ],
)
def test_constructor_arguments_are_checked(
    backend: MemoryBackend, arguments: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        AsyncLoopConsumer(backend, keys=KEY, **arguments)


def test_a_new_consumer_is_idle_with_zero_stats(backend: MemoryBackend) -> None:
    consumer = AsyncLoopConsumer(backend, keys=KEY)
    assert not consumer.running
    assert consumer.stats == ConsumerStats()
    assert (consumer.concurrency, consumer.max_attempts, consumer.shutdown_timeout) == (1, 5, 30.0)


@pytest.mark.asyncio
async def test_stats_count_processed_retried_dead_lettered_and_in_flight(
    backend: MemoryBackend,
) -> None:
    await backend.publish_many(KEY, [{"kind": "ok"}, {"kind": "flaky"}, {"kind": "doomed"}])
    in_flight_seen: list[int] = []
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, max_attempts=2, retry_delay=0.0)
    done = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        in_flight_seen.append(consumer.stats.in_flight)
        attempt = current_delivery().attempt
        if payload["kind"] == "flaky" and attempt == 1:
            raise RuntimeError("flaky")
        if payload["kind"] == "doomed":
            if attempt == 2:
                done.set()
            raise RuntimeError("doomed")

    running = start(consumer, handler)
    await asyncio.wait_for(done.wait(), WAIT)
    await dead_letter_of(backend)
    await stop(consumer, running)
    assert set(in_flight_seen) == {1}
    assert consumer.stats == ConsumerStats(processed=2, retried=2, dead_lettered=1, in_flight=0)


class PermanentError(Exception):
    """An error retrying cannot fix."""


@pytest.mark.asyncio
async def test_a_handler_may_dead_letter_a_permanent_error_at_once(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.publish_many(KEY, [{"n": 1}, {"n": 2, "bad": True}, {"n": 3}])
    handled: list[int] = []
    done = asyncio.Event()
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, max_attempts=5)

    async def handler(payload: dict[str, Any]) -> None:
        handled.append(payload["n"])
        if len(handled) == 3:
            done.set()
        if payload.get("bad"):
            error = PermanentError(f"order {payload['n']} can never ship")
            await current_delivery().dead_letter(error)
            raise error  # raising after settling is fine: the handler's decision stands

    running = start(consumer, handler)
    await asyncio.wait_for(done.wait(), WAIT)
    letter = await dead_letter_of(backend)
    await stop(consumer, running)
    assert sorted(handled) == [1, 2, 3], "the permanent error was not retried"
    assert letter.payload == {"n": 2, "bad": True}
    assert letter.headers["abe-attempts"] == "1"
    assert "PermanentError: order 2 can never ship" in letter.headers["abe-error"]
    assert consumer.stats == ConsumerStats(processed=2, retried=0, dead_lettered=1, in_flight=0)
    assert not [r for r in caplog.records if "could not" in r.getMessage()]
    assert backend.broker.pending(KEY, GROUP) == 0


# ---- what a runner observes: settled outcomes and readiness -------------------------------------


@pytest.mark.asyncio
async def test_on_settled_sees_every_outcome_the_unhandled_dead_letter_included(
    backend: MemoryBackend,
) -> None:
    await backend.publish(KEY, {"kind": "stale"})
    async with backend.subscribe(group=GROUP, keys=KEY) as earlier:
        for _ in range(2):  # two deliveries that never finished: past max_attempts
            await (await next_delivery(earlier, WAIT)).nack()
    await backend.publish_many(KEY, [{"kind": "ok"}, {"kind": "flaky"}, {"kind": "doomed"}])
    seen: list[tuple[str, int, str | None]] = []
    done = asyncio.Event()

    def settled(delivery: Delivery) -> None:
        seen.append((delivery.payload["kind"], delivery.attempt, delivery.outcome))
        if len(seen) == 6:
            done.set()

    async def handler(payload: dict[str, Any]) -> None:
        if payload["kind"] == "doomed" or (
            payload["kind"] == "flaky" and current_delivery().attempt == 1
        ):
            raise RuntimeError(payload["kind"])

    consumer = AsyncLoopConsumer(
        backend, GROUP, keys=KEY, max_attempts=2, retry_delay=0.0, on_settled=settled
    )
    running = start(consumer, handler)
    await asyncio.wait_for(done.wait(), WAIT)
    await stop(consumer, running)
    assert sorted(seen) == [
        ("doomed", 1, "nack"),
        ("doomed", 2, "dead-letter"),
        ("flaky", 1, "nack"),
        ("flaky", 2, "ack"),
        ("ok", 1, "ack"),
        ("stale", 3, "dead-letter"),  # dead-lettered without calling the handler
    ]


@pytest.mark.asyncio
async def test_an_on_settled_that_raises_is_logged_and_the_consumer_goes_on(
    backend: MemoryBackend, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.publish_many(KEY, [{"i": 1}, {"i": 2}])
    counter = Counter(2)

    def settled(delivery: Delivery) -> None:
        raise ValueError("metrics are down")

    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY, on_settled=settled)
    running = start(consumer, counter)
    await asyncio.wait_for(counter.reached.wait(), WAIT)
    await stop(consumer, running)
    assert consumer.stats.processed == 2
    assert broker.pending(KEY, GROUP) == 0
    assert "on_settled failed for message" in caplog.text
    assert "ValueError: metrics are down" in caplog.text


@pytest.mark.asyncio
async def test_ready_once_subscribed_and_no_longer_once_shutting_down(
    backend: MemoryBackend,
) -> None:
    consumer = AsyncLoopConsumer(backend, GROUP, keys=KEY)
    assert not consumer.ready  # not running
    release = asyncio.Event()
    entered = asyncio.Event()
    readiness_inside: list[bool] = []

    async def handler(payload: dict[str, Any]) -> None:
        readiness_inside.append(consumer.ready)
        entered.set()
        await release.wait()

    running = start(consumer, handler)
    await backend.publish(KEY, {"i": 1})
    await asyncio.wait_for(entered.wait(), WAIT)
    assert readiness_inside == [True]
    stopping = asyncio.ensure_future(consumer.shutdown())
    await spin()
    assert not consumer.ready  # draining: no longer takes messages
    release.set()
    await asyncio.wait_for(stopping, WAIT)
    await asyncio.wait_for(running, WAIT)
    assert not consumer.ready


class _BrokerComesLater(MemoryBackend):
    """A broker that is away for the first `away` attempts to join."""

    def __init__(self, broker: MemoryBroker, away: int) -> None:
        super().__init__(MemorySettings(redelivery_timeout=30), broker=broker)
        self.away = away
        self.attempts = 0

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        self.attempts += 1
        if self.attempts <= self.away:
            raise BackendUnavailableError("memory: the broker is restarting")
        return await super()._open_receiver(group, keys)


@pytest.mark.asyncio
async def test_a_worker_started_before_its_broker_waits_for_it(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("abe.backends.message_queue.consumer._JOIN_RETRY_FIRST", 0.01)
    backend = _BrokerComesLater(broker, away=2)
    await backend.publish(KEY, {"n": 1})
    handled = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        handled.set()

    consumer = AsyncLoopConsumer(backend, GROUP, keys=[KEY])
    running = start(consumer, handler)
    await asyncio.wait_for(handled.wait(), WAIT)
    await stop(consumer, running)
    assert backend.attempts == 3
    assert "cannot join group 'workers' on orders yet" in caplog.text


@pytest.mark.asyncio
async def test_shutdown_ends_the_wait_for_a_broker(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("abe.backends.message_queue.consumer._JOIN_RETRY_FIRST", 60)
    backend = _BrokerComesLater(broker, away=1_000)
    consumer = AsyncLoopConsumer(backend, GROUP, keys=[KEY])
    running = start(consumer, lambda payload: None)
    await spin()
    await asyncio.wait_for(consumer.shutdown(), WAIT)
    await asyncio.wait_for(running, WAIT)
    assert backend.attempts == 1


@pytest.mark.asyncio
async def test_refused_credentials_end_the_worker(broker: MemoryBroker) -> None:
    class Refused(MemoryBackend):
        async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
            raise AuthenticationError("memory: wrong password")

    consumer = AsyncLoopConsumer(Refused(broker=broker), GROUP, keys=[KEY])
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(consumer.run(lambda payload: None), WAIT)
