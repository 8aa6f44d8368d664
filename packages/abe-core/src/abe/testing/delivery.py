"""Contract 9-15: at-least-once delivery: acks hold, unfinished work comes back, failures end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.consumer import AsyncLoopConsumer, current_delivery
from abe.dedupe import Deduplicate
from abe.testing.fixtures import Backends, ContractFixtures, RawWriter
from abe.testing.helpers import (
    WAIT,
    eventually,
    gather_all,
    next_delivery,
    nothing_arrives,
    receive,
    unique,
    while_progressing,
)

__all__ = ["DeliveryContract"]


def _window(backend: BaseBackend) -> float:
    """How long to watch for a message that must not come back: past one redelivery."""
    return backend.redelivery_timeout * 2 + 1.0


def _account_missing(total: int, processed: Counter[int], held: list[int]) -> str:
    """Which of `total` numbered messages were never processed, and whether the killed
    member held them (`held`: its delivery, then what it had prefetched; both given back)."""
    missing = sorted(set(range(total)) - set(processed))
    given_back = [number for number in missing if number in held]
    where = (
        f"{given_back} of them held by the killed member, given back when it closed"
        + (" (the delivery in its handler)" if held and held[0] in given_back else "")
        if given_back
        else f"none of them held by the killed member ({len(held)} held)"
    )
    return f"{len(missing)} message(s) never processed, e.g. {missing[:10]}; {where}"


@pytest.mark.asyncio
class DeliveryContract(ContractFixtures):
    """Acknowledgement, redelivery, delays, dead letters and poison bodies."""

    async def test_ack_on_next(self, backends: Backends) -> None:
        backend = backends.new()
        key, group = unique("ack-next"), unique("group")
        await backend.publish_many(key, [{"number": number} for number in range(3)])
        stream = backend.consume(group=group, keys=[key])
        first = await asyncio.wait_for(stream.__anext__(), WAIT)
        second = await asyncio.wait_for(stream.__anext__(), WAIT)  # acknowledges the first
        await stream.aclose()  # the second never finished: it must come back
        if backend.capabilities.per_key_ordering:
            assert [first["number"], second["number"]] == [0, 1]
        rest = sorted({0, 1, 2} - {first["number"]})

        async with backends.new().subscribe(group=group, keys=[key]) as subscription:
            later = await receive(subscription, 2, WAIT + _window(backend))
            assert sorted(delivery.payload["number"] for delivery in later) == rest
            await nothing_arrives(subscription, _window(backend))

    @pytest.mark.parametrize("how", ["exception", "cancelled", "closed", "abandoned"])
    async def test_redeliver_unfinished(self, backends: Backends, how: str) -> None:
        first_member, other_member = backends.new(), backends.new()
        key, group = unique("unfinished"), unique("group")
        await first_member.publish(key, {"job": how})
        if how == "abandoned":  # the process holding it stops without a word
            subscription = first_member.subscribe(group=group, keys=[key])
            await next_delivery(subscription)
            await first_member.close()
        else:
            stream = first_member.consume(group=group, keys=[key])
            got = asyncio.Event()

            async def process() -> None:
                async for _ in stream:
                    got.set()
                    if how == "exception":
                        raise RuntimeError("handler failed")
                    await asyncio.Event().wait()  # works until cancelled or closed

            task = asyncio.ensure_future(process())
            await asyncio.wait_for(got.wait(), WAIT)
            if how == "cancelled":
                task.cancel()
            elif how == "closed":
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await stream.aclose()
            results = await asyncio.gather(task, return_exceptions=True)
            if how == "exception":
                assert isinstance(results[0], RuntimeError)
        started = time.monotonic()
        async with other_member.subscribe(group=group, keys=[key]) as subscription:
            delivery = await next_delivery(subscription, WAIT + _window(first_member))
            assert delivery.payload == {"job": how}
            assert delivery.attempt == 2, f"redelivered as attempt {delivery.attempt}"
            await delivery.ack()
        assert time.monotonic() - started <= first_member.redelivery_timeout + WAIT

    async def test_close_gives_back_prefetched(self, backends: Backends) -> None:
        # A worker shutting down gracefully holds messages it fetched but never handed to a
        # handler: they go back at once, not after the redelivery timeout.
        worker, other_member = backends.new(prefetch=16), backends.new()
        key, group = unique("give-back"), unique("group")
        total = 12
        await worker.publish_many(key, [{"number": number} for number in range(total)])
        subscription = worker.subscribe(group=group, keys=[key])
        first = await next_delivery(subscription)
        await first.ack()
        await subscription.aclose()
        async with other_member.subscribe(group=group, keys=[key]) as subscription:
            started = time.monotonic()  # once joined: a group join is not a redelivery
            rest = await receive(subscription, total - 1, WAIT)
            waited = time.monotonic() - started
        numbers = sorted(delivery.payload["number"] for delivery in rest)
        assert numbers == [n for n in range(total) if n != first.payload["number"]]
        assert waited < worker.redelivery_timeout / 2, (
            f"the unread messages came back after {waited:.2f}s, not within half the redelivery"
            f" timeout ({worker.redelivery_timeout:g}s): close() did not give them back"
        )

    async def test_nack_with_delay(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("nack")
        await backend.publish(key, {"retry": "me"})
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            nacked_at = time.monotonic()
            await delivery.nack(delay=1.5)
            again = await next_delivery(subscription, WAIT + 1.5)
            waited = time.monotonic() - nacked_at
            assert waited >= 1.5 - 0.05, f"came back after {waited:.2f}s, before its 1.5s delay"
            assert again.payload == {"retry": "me"}
            assert again.attempt == 2
            await again.ack()

    async def test_dead_letter(self, backends: Backends) -> None:
        backend = backends.new()
        key, group = unique("doomed"), unique("group")
        await backend.publish(key, {"doomed": True}, headers={"trace-id": "t-7"})
        attempts: list[int] = []
        done = asyncio.Event()
        consumer = AsyncLoopConsumer(backend, group, keys=[key], max_attempts=3, retry_delay=0.05)

        async def handler(payload: dict[str, Any]) -> None:
            attempts.append(current_delivery().attempt)
            if len(attempts) == 3:
                done.set()
            raise ValueError("cannot ship to the moon")

        running = asyncio.ensure_future(consumer.run(handler))
        try:
            await asyncio.wait_for(done.wait(), WAIT)
            async with backends.new().subscribe(
                group=unique("dlq-reader"), keys=[f"{key}-dlq"]
            ) as dead:
                letter = await next_delivery(dead)
                await letter.ack()
        finally:
            await consumer.shutdown()
            await running
        assert attempts == [1, 2, 3]
        assert letter.payload == {"doomed": True}
        assert "ValueError: cannot ship to the moon" in letter.headers["abe-error"]
        assert letter.headers["abe-attempts"] == "3"
        assert letter.headers["abe-original-key"] == key
        assert letter.headers["trace-id"] == "t-7"
        assert consumer.stats.dead_lettered == 1
        async with backend.subscribe(group=group, keys=[key]) as again:
            await nothing_arrives(again, _window(backend))

    async def test_poison_body(self, backends: Backends, write_raw: RawWriter) -> None:
        backend = backends.new()
        key = unique("poison")
        try:
            await write_raw(key, b"\xff this is not json {")
        except Exception:  # a text-only broker (SQS): its producers would send this instead
            await write_raw(key, "\ufffd this is not json {".encode())
        await write_raw(key, b"[1, 2, 3]")
        await backend.publish(key, {"after": "poison"})
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            assert delivery.payload == {"after": "poison"}
            await delivery.ack()
        async with backend.subscribe(group=unique("dlq"), keys=[f"{key}-dlq"]) as dead:
            letters = await receive(dead, 2)
        # Brokers with binary bodies keep the bytes (base64); text-only ones (SQS) hold text.
        wrapped = [letter.payload for letter in letters]
        assert all(
            set(body) in ({"undecodable_body"}, {"undecodable_body_base64"}) for body in wrapped
        )
        assert any(
            "this is not json {" in str(body) or "undecodable_body_base64" in body
            for body in wrapped
        )
        assert {"undecodable_body": "[1, 2, 3]"} in wrapped, wrapped
        for letter in letters:
            assert letter.headers["abe-original-key"] == key
            assert "undecodable" in letter.headers["abe-error"]

    async def test_idempotent_publish(self, backends: Backends) -> None:
        backend = backends.new()
        key, group = unique("retried"), unique("group")
        message_id = f"order-{unique('id')}"
        for _ in range(2):  # the caller retries a publish whose outcome it did not learn
            await backend.publish(key, {"order": 1001}, message_id=message_id)
        await backend.publish_many(key, [{"order": 1002}], message_ids=[f"{message_id}-b"])
        copies = 1 if backend.capabilities.deduplication else 2
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            got = await receive(subscription, copies + 1)
            await nothing_arrives(subscription, 1.0)
        ids = sorted(delivery.id for delivery in got)
        assert ids == sorted([message_id] * copies + [f"{message_id}-b"]), (
            f"deduplication={backend.capabilities.deduplication}: got ids {ids}"
        )
        for delivery in got:
            assert delivery.headers.get("abe-id", delivery.id) == delivery.id
        # where the broker stored both, Deduplicate in the consumer handles the order once
        await backend.publish(key, {"order": 1003}, message_id=f"{message_id}-c")
        await backend.publish(key, {"order": 1003}, message_id=f"{message_id}-c")
        handled: list[int] = []
        dedupe = Deduplicate()

        async def handler(payload: dict[str, Any]) -> None:
            handled.append(payload["order"])

        consumer = AsyncLoopConsumer(backend, group, keys=[key], middleware=[dedupe])
        running = asyncio.ensure_future(consumer.run(handler))
        try:
            await eventually(lambda: consumer.stats.processed >= copies, what="every copy")
        finally:
            await consumer.shutdown()
            await running
        assert handled == [1003]
        assert dedupe.skipped == copies - 1

    async def test_handler_errors_do_not_stall(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("no-stall")
        await backend.publish(key, {"bad": True})
        await backend.publish_many(key, [{"number": number} for number in range(20)])
        good: list[int] = []
        bad_attempts: list[int] = []
        all_good = asyncio.Event()
        consumer = AsyncLoopConsumer(
            backend, unique("group"), keys=[key], max_attempts=5, retry_delay=0.5
        )

        async def handler(payload: dict[str, Any]) -> None:
            if payload.get("bad"):
                bad_attempts.append(current_delivery().attempt)
                raise RuntimeError("always fails")
            good.append(payload["number"])
            if len(set(good)) == 20:
                all_good.set()

        running = asyncio.ensure_future(consumer.run(handler))
        try:
            await asyncio.wait_for(all_good.wait(), WAIT)
            attempts_meanwhile = len(bad_attempts)
        finally:
            await consumer.shutdown()
            await running
        assert sorted(set(good)) == list(range(20))
        assert attempts_meanwhile < 5, "the good messages waited for the failing one"

    async def test_long_handler_is_not_redelivered(self, backends: Backends) -> None:
        worker, other = backends.new(), backends.new()
        key, group = unique("long"), unique("group")
        await worker.publish(key, {"long": "job"})
        hold = 2.5 * worker.redelivery_timeout  # well past the point of redelivery
        started = asyncio.Event()
        attempts: list[int] = []
        consumer = AsyncLoopConsumer(worker, group, keys=[key])

        async def handler(payload: dict[str, Any]) -> None:
            attempts.append(current_delivery().attempt)
            started.set()
            await asyncio.sleep(hold)  # the long job itself

        running = asyncio.ensure_future(consumer.run(handler))
        try:
            await asyncio.wait_for(started.wait(), WAIT)
            async with other.subscribe(group=group, keys=[key]) as subscription:
                await nothing_arrives(subscription, hold)
        finally:
            await consumer.shutdown(timeout=WAIT)
            await running
        assert attempts == [1]
        assert consumer.stats.processed == 1
        async with other.subscribe(group=group, keys=[key]) as subscription:
            await nothing_arrives(subscription, _window(worker))

    async def test_at_least_once_under_concurrency(
        self, backends: Backends, record_property: Any
    ) -> None:
        total, publishers, members = 2000, 4, 4
        key, group = unique("many"), unique("workers")
        consumers = [backends.new(prefetch=20) for _ in range(members)]
        processed: Counter[int] = Counter()
        all_seen = asyncio.Event()
        victim_stopped = asyncio.Event()
        victim: list[int] = []
        held: list[int] = []  # the killed member's delivery, then the ones it had prefetched

        async def work(index: int, backend: BaseBackend) -> None:
            async with backend.subscribe(group=group, keys=[key]) as subscription:
                async for delivery in subscription:
                    if not victim and sum(processed.values()) >= total // 10:
                        victim.append(index)
                        held.append(delivery.payload["number"])
                        held.extend(queued.payload["number"] for queued in subscription.buffered())
                        victim_stopped.set()
                        await asyncio.Event().wait()  # crashes here, holding this delivery
                    processed[delivery.payload["number"]] += 1
                    await delivery.ack()
                    if len(processed) == total:
                        all_seen.set()

        async def publish(part: int) -> None:
            backend = backends.new()
            for number in range(part, total, publishers):
                await backend.publish(key, {"number": number})

        tasks = [asyncio.ensure_future(work(index, c)) for index, c in enumerate(consumers)]
        try:
            await gather_all(*(publish(part) for part in range(publishers)))
            await asyncio.wait_for(victim_stopped.wait(), WAIT)
            tasks[victim[0]].cancel()  # the killed member: whatever it held must come back
            stall = 2 * WAIT + _window(consumers[0])
            await while_progressing(
                all_seen, lambda: len(processed), stall, f"processing {total} messages"
            )
        except AssertionError as exc:  # which messages, and whether the killed member had them
            raise AssertionError(f"{exc}; {_account_missing(total, processed, held)}") from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert len(processed) == total, _account_missing(total, processed, held)
        duplicates = sum(count - 1 for count in processed.values())
        record_property("duplicates", duplicates)
        print(f"at_least_once_under_concurrency: {total} messages, {duplicates} duplicates")
