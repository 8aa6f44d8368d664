"""Contract 25: foreign bodies of every bad shape are dead-lettered, and the consumer goes on.

Any producer can write to a key abe reads. Whatever it writes (JSON nested a hundred
thousand deep, bytes that are not UTF-8, nothing at all, JSON that is not an object,
more than the backend accepts, an entry missing the fields the wire format needs), the
consumer moves it to `<key>-dlq` with a reason naming the problem, and delivers the
messages behind it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.testing.fixtures import Backends, ContractFixtures, MalformedWrite, RawWriter
from abe.testing.helpers import WAIT, receive, unique

__all__ = ["HostileInputContract", "hostile_bodies"]


def hostile_bodies(backend: BaseBackend) -> list[tuple[str, bytes, str]]:
    """(what, body, words the dead-letter reason must contain) for every bad shape of body."""
    oversized = json.dumps({"blob": "x" * backend.max_payload_bytes}).encode()
    return [
        # Python 3.12+ reads this (a list, not an object); 3.10 and 3.11 find it too deep
        ("nested 1,000 deep", b"[" * 1000 + b"]" * 1000, "undecodable body: the body is "),
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("objects nested deep", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        ("not UTF-8", b"\xff\xfe not json", "not UTF-8"),
        ("an encoded surrogate", b'{"s": "\xed\xa0\x80"}', "not UTF-8"),
        ("empty", b"", "empty"),
        ("a JSON list", b"[1, 2, 3]", "not an object"),
        ("a JSON string", b'"text"', "not an object"),
        ("JSON null", b"null", "not an object"),
        ("NaN", b'{"x": NaN}', "NaN"),
        ("truncated JSON", b'{"order": 1', "not JSON"),
        ("too large", oversized, "over this backend's limit"),
    ]


@pytest.mark.asyncio
class HostileInputContract(ContractFixtures):
    """Foreign bodies cannot stop a consumer, and each one is kept where it can be looked at."""

    async def test_hostile_bodies(
        self,
        backends: Backends,
        write_raw: RawWriter,
        malformed_writes: list[MalformedWrite],
        record_property: Any,
    ) -> None:
        backend = backends.new()
        key, group = unique("hostile"), unique("group")
        written: list[tuple[str, str]] = []
        refused_by_broker: list[str] = []
        await backend.publish(key, {"number": 0})
        for what, body, reason in hostile_bodies(backend):
            try:
                await write_raw(key, body)
            except Exception as exc:  # the broker itself refuses it: it can never arrive
                refused_by_broker.append(f"{what} ({type(exc).__name__})")
                continue
            written.append((what, reason))
        for malformed in malformed_writes:
            await malformed.write(key)
            written.append((malformed.what, malformed.reason))
        await backend.publish(key, {"number": 1})
        record_property("refused_by_the_broker", ", ".join(refused_by_broker) or "none")

        handled: list[int] = []
        both = asyncio.Event()

        async def handler(payload: dict[str, Any]) -> None:
            handled.append(payload["number"])
            if {0, 1} <= set(handled):
                both.set()

        consumer = AsyncLoopConsumer(backend, group, keys=[key], concurrency=4)
        running = asyncio.ensure_future(consumer.run(handler))
        try:
            async with backends.new().subscribe(group=unique("dlq"), keys=[f"{key}-dlq"]) as dead:
                letters = await receive(dead, len(written))
            await asyncio.wait_for(both.wait(), WAIT)
        finally:
            await consumer.shutdown()
            await running
        assert sorted(handled) == [0, 1], "a good message was lost or handled twice"
        reasons = sorted(letter.headers["abe-error"] for letter in letters)
        for letter in letters:
            assert letter.headers["abe-original-key"] == key
            assert letter.headers["abe-error"].startswith("undecodable body: ")
            assert "utf-16" not in letter.headers["abe-error"].lower()
        for what, words in written:
            assert any(words in reason for reason in reasons), (
                f"no dead letter for {what} says {words!r}: {reasons}"
            )
