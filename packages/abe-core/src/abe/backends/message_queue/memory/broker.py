"""An in-process broker with the semantics of the real ones, for development and tests.

Each key is an append-only log. Each group on a key has a cursor (the next message no
member has seen) and leases on the messages its members hold: a lease that is not
settled before it runs out, or a nack whose delay has passed, makes the message
deliverable again with its attempt number raised. New groups start at the oldest
message, so nothing published before the first consumer is lost.

State belongs to the broker object, never to a loop: one broker serves several event
loops one after another (each test of a suite may run in its own loop).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.base.deadlines import bounded

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Entry:
    offset: int
    body: bytes
    headers: MappingProxyType[str, str]


@dataclass(slots=True)
class _Lease:
    deliveries: int
    due: float
    generation: int


@dataclass
class _Group:
    cursor: int
    leases: dict[int, _Lease] = field(default_factory=dict)
    # (due, generation, offset): skipped when the lease changed since it was pushed
    due: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass
class _Log:
    entries: list[_Entry] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)
    waiters: set[asyncio.Future[None]] = field(default_factory=set)


_generations = itertools.count(1)
_NAMED: dict[str, MemoryBroker] = {}


class MemoryBroker:
    """Keys, groups, leases and delays, all inside this process; safe across event loops."""

    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}

    @classmethod
    def named(cls, name: str) -> MemoryBroker:
        """The process-wide broker called `name`, created on first use.

        Backends built by `from_env()` share the broker `ABE_MEMORY_BROKER` names, so a
        producer and a consumer created separately see the same messages.
        """
        broker = _NAMED.get(name)
        if broker is None:
            broker = _NAMED[name] = cls()
        return broker

    # ---- introspection, for tests of applications ----------------------------------------

    def keys(self) -> list[str]:
        """Every key that has been published to or subscribed to."""
        return sorted(self._logs)

    def messages(self, key: str) -> list[dict[str, Any]]:
        """The payloads ever published to `key`, oldest first (acknowledged or not)."""
        log = self._logs.get(key)
        return [] if log is None else [json.loads(entry.body) for entry in log.entries]

    def exists(self, key: str) -> bool:
        """Whether `key` has been published to or subscribed to (and not deleted since)."""
        return key in self._logs

    def groups(self, key: str) -> list[str]:
        """The groups that have joined `key`."""
        log = self._logs.get(key)
        return [] if log is None else sorted(log.groups)

    def pending(self, key: str, group: str) -> int:
        """Messages of `key` that `group` has not acknowledged yet (delivered or not)."""
        log = self._logs.get(key)
        if log is None:
            return 0
        state = log.groups.get(group)
        if state is None:
            return len(log.entries)
        return len(log.entries) - state.cursor + len(state.leases)

    # ---- the broker side of the backend ------------------------------------------------------

    def _log(self, key: str) -> _Log:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        return log

    def append(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Add messages to the end of `key`'s log and wake the members waiting on it."""
        log = self._log(key)
        base = len(log.entries)
        log.entries.extend(
            _Entry(base + index, message.body, MappingProxyType(dict(message.headers)))
            for index, message in enumerate(messages)
        )
        _wake(log.waiters)

    def join(self, key: str, group: str) -> _Group:
        """`group`'s state on `key`, created at the oldest message kept if new."""
        log = self._log(key)
        state = log.groups.get(group)
        if state is None:
            state = log.groups[group] = _Group(cursor=0)
        return state

    def leave(self, key: str, group: str) -> None:
        """Forget `group`'s position and leases on `key`; the messages stay."""
        log = self._logs.get(key)
        if log is not None:
            log.groups.pop(group, None)

    def delete(self, key: str) -> None:
        """Forget `key`: its messages and every group's position; members waiting wake up."""
        log = self._logs.pop(key, None)
        if log is not None:
            _wake(log.waiters)

    def take(
        self, group: str, keys: Sequence[str], max_messages: int, lease: float, start: int
    ) -> list[IncomingMessage]:
        """Up to `max_messages` deliverable messages: due redeliveries first, then new ones."""
        now = time.monotonic()
        taken: list[IncomingMessage] = []
        count = len(keys)
        for step in range(count):
            if len(taken) >= max_messages:
                break
            key = keys[(start + step) % count]
            log = self._log(key)
            state = self.join(key, group)  # joined already, unless the key was deleted since
            while state.due and len(taken) < max_messages and state.due[0][0] <= now:
                due, generation, offset = heapq.heappop(state.due)
                held = state.leases.get(offset)
                if held is None or held.generation != generation or held.due != due:
                    continue  # settled, handed out again, or extended since this was pushed
                taken.append(
                    self._deliver(
                        key, log, state, offset, deliveries=held.deliveries + 1, due=now + lease
                    )
                )
            while state.cursor < len(log.entries) and len(taken) < max_messages:
                offset = state.cursor
                state.cursor += 1
                taken.append(self._deliver(key, log, state, offset, deliveries=1, due=now + lease))
        return taken

    @staticmethod
    def _deliver(
        key: str, log: _Log, state: _Group, offset: int, *, deliveries: int, due: float
    ) -> IncomingMessage:
        generation = next(_generations)
        state.leases[offset] = _Lease(deliveries, due, generation)
        heapq.heappush(state.due, (due, generation, offset))
        entry = log.entries[offset]
        return IncomingMessage(
            key=key,
            body=entry.body,
            headers=entry.headers,
            attempt=deliveries,
            broker_id=f"{key}:{offset}",
            handle=(offset, generation),
        )

    def ack(self, group: str, messages: Sequence[IncomingMessage]) -> None:
        """Settle messages for `group`: they are never delivered to it again."""
        for message in messages:
            log = self._logs.get(message.key)
            state = None if log is None else log.groups.get(group)
            if state is not None:
                state.leases.pop(message.handle[0], None)

    def extend(self, group: str, messages: Sequence[IncomingMessage], lease: float) -> None:
        """Renew the leases of messages still being worked on, if they are still held."""
        due = time.monotonic() + lease
        for message in messages:
            log = self._logs.get(message.key)
            state = None if log is None else log.groups.get(group)
            if state is None:
                continue
            offset, generation = message.handle
            held = state.leases.get(offset)
            if held is not None and held.generation == generation:
                held.due = due
                heapq.heappush(state.due, (due, generation, offset))

    def release(self, group: str, messages: Sequence[IncomingMessage]) -> None:
        """Make messages that were never handed out deliverable now, as if never delivered."""
        now = time.monotonic()
        for message in messages:
            log = self._logs.get(message.key)
            state = None if log is None else log.groups.get(group)
            if state is None:
                continue
            offset, generation = message.handle
            held = state.leases.get(offset)
            if held is None or held.generation != generation:
                continue
            fresh = next(_generations)
            state.leases[offset] = _Lease(held.deliveries - 1, now, fresh)
            heapq.heappush(state.due, (now, fresh, offset))
            _wake(log.waiters)  # type: ignore[union-attr]

    def nack(self, group: str, message: IncomingMessage, delay: float) -> None:
        """Make a held message deliverable again after `delay` seconds (if still held)."""
        log = self._logs.get(message.key)
        state = None if log is None else log.groups.get(group)
        if state is None:
            return
        offset = message.handle[0]
        held = state.leases.get(offset)
        if held is None or held.generation != message.handle[1]:
            return  # settled already, or its lease ran out and another member holds it now
        generation = next(_generations)
        due = time.monotonic() + delay
        state.leases[offset] = _Lease(held.deliveries, due, generation)
        heapq.heappush(state.due, (due, generation, offset))
        _wake(log.waiters)  # type: ignore[union-attr]

    async def wait(self, group: str, keys: Sequence[str], timeout: float) -> None:
        """Return when a key gets a message, a lease or delay on them runs out, or `timeout`."""
        now = time.monotonic()
        soonest = now + timeout
        logs = [self._log(key) for key in keys]
        for key in keys:
            due = self.join(key, group).due
            if due:
                soonest = min(soonest, due[0][0])
        if soonest <= now:
            return
        waiter = asyncio.get_running_loop().create_future()
        for log in logs:
            log.waiters.add(waiter)
        try:
            await bounded(waiter, soonest - now)
        except asyncio.TimeoutError:
            pass
        finally:
            for log in logs:
                log.waiters.discard(waiter)


def _wake(waiters: set[asyncio.Future[None]]) -> None:
    for waiter in list(waiters):
        if waiter.get_loop().is_closed():
            waiters.discard(waiter)  # its loop ended while it waited: nobody will wake
        elif not waiter.done():
            waiter.set_result(None)
