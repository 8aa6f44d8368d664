"""Delivery on its own: its metadata, and that it is settled exactly once, whatever the way."""

from __future__ import annotations

from typing import Any

import pytest

from abe.backends.message_queue.base.codec import IncomingMessage
from abe.backends.message_queue.base.delivery import Delivery
from abe.errors import DeliveryStateError


class Settler:
    """Records how each delivery was settled."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.room = True
        self.backend_name = "test"
        self.group = "workers"

    def _ack_message_nowait(self, message: IncomingMessage) -> bool:
        if self.room:
            self.calls.append(("ack_nowait", None))
        return self.room

    async def _settle_ack(self, delivery: Delivery) -> None:
        self.calls.append(("ack", None))

    async def _settle_nack(self, delivery: Delivery, delay: float) -> None:
        self.calls.append(("nack", delay))

    async def _settle_dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.calls.append(("dead_letter", reason))


def delivery(headers: dict[str, str] | None = None, *, attempt: int = 1) -> Delivery:
    message = IncomingMessage(
        key="orders", body=b"{}", headers=headers or {}, attempt=attempt, broker_id="orders:7"
    )
    return Delivery(message, {}, Settler())


def settler_of(item: Delivery) -> Settler:
    settler = item._settler
    assert isinstance(settler, Settler)
    return settler


def test_id_is_abes_header_else_the_brokers_id() -> None:
    assert delivery({"abe-id": "abc-1"}).id == "abc-1"
    assert delivery().id == "orders:7"
    assert delivery({"abe-id": ""}).id == "orders:7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1700000000123", 1_700_000_000.123), ("", None), ("soon", None), (None, None)],
)
def test_published_at_reads_milliseconds_and_tolerates_garbage(
    text: str | None, expected: float | None
) -> None:
    headers = {} if text is None else {"abe-published-at": text}
    assert delivery(headers).published_at == expected


def test_key_attempt_headers_and_repr() -> None:
    item = delivery({"abe-id": "x-1", "tenant": "acme"}, attempt=3)
    assert (item.key, item.attempt, item.headers["tenant"]) == ("orders", 3, "acme")
    assert repr(item) == "Delivery(key='orders', id='x-1', attempt=3)"
    assert not item.settled


@pytest.mark.asyncio
async def test_ack_nack_and_dead_letter_reach_the_settler() -> None:
    acked, nacked, dropped, failed = delivery(), delivery(), delivery(), delivery()
    await acked.ack()
    await nacked.nack(2.5)
    await dropped.dead_letter("no such customer")
    await failed.dead_letter(KeyError("customer"))
    assert settler_of(acked).calls == [("ack", None)]
    assert settler_of(nacked).calls == [("nack", 2.5)]
    assert settler_of(dropped).calls == [("dead_letter", "no such customer")]
    assert settler_of(failed).calls == [("dead_letter", "KeyError: 'customer'")]
    assert all(item.settled for item in (acked, nacked, dropped, failed))


@pytest.mark.asyncio
async def test_nack_defaults_to_no_delay() -> None:
    item = delivery()
    await item.nack()
    assert settler_of(item).calls == [("nack", 0.0)]


@pytest.mark.asyncio
async def test_a_second_settle_is_refused_and_never_reaches_the_settler() -> None:
    item = delivery({"abe-id": "x-1"})
    await item.nack()
    for settle in (item.ack, item.nack, lambda: item.dead_letter("late")):
        with pytest.raises(DeliveryStateError, match=r"cannot .* 'x-1' of 'orders'"):
            await settle()
    assert settler_of(item).calls == [("nack", 0.0)]


@pytest.mark.asyncio
async def test_a_refused_nack_leaves_the_delivery_unsettled() -> None:
    item = delivery()
    with pytest.raises(ValueError, match="delay must be zero or more seconds"):
        await item.nack(-0.1)
    assert not item.settled
    assert settler_of(item).calls == []
    await item.ack()
    assert settler_of(item).calls == [("ack", None)]


@pytest.mark.asyncio
async def test_ack_nowait_settles_at_once_when_the_settler_has_room() -> None:
    item = delivery()
    assert item.ack_nowait()
    assert (item.settled, item.outcome) == (True, "ack")
    assert not item.ack_nowait(), "a settled delivery is not acknowledged twice"
    with pytest.raises(DeliveryStateError):
        await item.ack()
    assert settler_of(item).calls == [("ack_nowait", None)]


@pytest.mark.asyncio
async def test_ack_nowait_without_room_leaves_the_delivery_for_ack() -> None:
    item = delivery()
    settler_of(item).room = False
    assert not item.ack_nowait()
    assert not item.settled
    await item.ack()
    assert settler_of(item).calls == [("ack", None)]
