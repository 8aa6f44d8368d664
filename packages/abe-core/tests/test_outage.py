"""An outage is said twice by abe (gone, back), and the client's flood is held back to DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import pytest

from abe.backends.message_queue.memory import MemoryBackend, MemorySettings
from abe.errors import BackendUnavailableError
from abe.provider import ErrorMap, OutgoingMessage, unavailable

client = logging.getLogger("fakeclient.conn")


class Flaky(MemoryBackend):
    """A backend whose client library logs an ERROR per failed attempt while `down`."""

    client_loggers: ClassVar[tuple[str, ...]] = ("fakeclient",)
    errors: ClassVar[ErrorMap] = ErrorMap("flaky", {OSError: unavailable("check FLAKY_URL")})
    down = True

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        if self.down:
            for attempt in range(50):
                client.error("Unable to connect to broker, attempt %d", attempt)
            raise ConnectionRefusedError("refused")
        await super()._send(key, messages)


@pytest.mark.asyncio
async def test_two_lines_from_abe_and_the_clients_flood_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    backend = Flaky(MemorySettings())
    try:
        for _ in range(3):
            with pytest.raises(BackendUnavailableError):
                await backend.publish("k", {"n": 1})
        backend.down = False
        await backend.publish("k", {"n": 2})
        await backend.publish("k", {"n": 3})
    finally:
        await backend.close()
    shown = [record for record in caplog.records if record.levelno >= logging.INFO]
    outage = [record.getMessage() for record in shown if record.name == "abe.outage"]
    assert len(outage) == 2, outage
    assert "is not answering" in outage[0]
    assert "Unable to connect to broker, attempt 0" in outage[0]
    assert "answers again after" in outage[1]
    assert "150 client log line(s) held back" in outage[1]
    assert not [record for record in shown if record.name.startswith("fakeclient")]


@pytest.mark.asyncio
async def test_at_debug_the_clients_lines_are_still_there(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = Flaky(MemorySettings())
    try:
        with pytest.raises(BackendUnavailableError):
            await backend.publish("k", {"n": 1})
    finally:
        await backend.close()
    held = [record for record in caplog.records if record.name == "fakeclient.conn"]
    assert len(held) == 50
    assert {record.levelname for record in held} == {"DEBUG"}
    assert client.filters == []  # closing the backend took its filters off


class Rebalancing(Flaky):
    """A backend whose client warns of the group's routine as well as of failures."""

    client_routine_logs: ClassVar[frozenset[str]] = frozenset({"Group %s is rebalancing"})


@pytest.mark.asyncio
async def test_the_groups_routine_is_shown_at_info_and_is_no_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    backend = Rebalancing(MemorySettings())
    try:
        client.warning("Group %s is rebalancing", "workers")
        assert not backend.outage.down
        client.warning({"not": "a string"})  # any object may be a message: this one unhashable
        assert backend.outage.down  # (a client warning that is not routine starts an outage)
        backend.outage.recovered()
        with pytest.raises(BackendUnavailableError):  # a failure still starts an outage
            await backend.publish("k", {"n": 1})
        assert backend.outage.down
        client.warning("Group %s is rebalancing", "workers")  # not held back meanwhile
    finally:
        await backend.close()
    routine = [record for record in caplog.records if record.msg == "Group %s is rebalancing"]
    assert [(record.levelname, record.getMessage()) for record in routine] == [
        ("INFO", "Group workers is rebalancing")
    ] * 2
    outage = [record.getMessage() for record in caplog.records if record.name == "abe.outage"]
    assert len(outage) == 3, outage  # the unhashable warning's outage and its end, then one
    assert "{'not': 'a string'}" in outage[0]
    assert "Unable to connect to broker, attempt 0" in outage[2]  # not the rebalance
