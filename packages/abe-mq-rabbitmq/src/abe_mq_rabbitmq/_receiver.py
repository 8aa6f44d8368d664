"""The receiver: one member of a group, reading a fixed set of keys.

abe-core drives it: `fetch` at most what the consumer may still hold, `ack` in batches,
`nack` with a delay, `extend` for handlers still running, `release` what was fetched but
never handed out. Each `# BROKER CALL` marks a call to replace.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from abe import MemoryBroker
from abe.provider import IncomingMessage, Receiver

__all__ = ["RabbitmqReceiver"]


class RabbitmqReceiver(Receiver):
    """Reads `keys` for `group`; a message unsettled after `lease` seconds comes back."""

    def __init__(
        self, broker: MemoryBroker, group: str, keys: tuple[str, ...], lease: float
    ) -> None:
        self._broker, self._group, self._keys, self._lease = broker, group, keys, lease
        self._turn = itertools.count()

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        """1 to `max_messages` messages, or none after `timeout`; cancellation loses nothing."""
        remaining = timeout
        while True:
            # BROKER CALL: one blocking read of at most max_messages over the keys, waiting at
            # most `remaining`. Return IncomingMessage(key, body, headers, attempt, broker_id,
            # handle): attempt rises on each redelivery, handle is what ack/nack need; messages
            # unacknowledged after the lease, or nacked and due, come back here.
            taken = self._broker.take(
                self._group, self._keys, max_messages, self._lease, next(self._turn)
            )
            if taken or remaining <= 0:
                return taken
            started = time.monotonic()
            await self._broker.wait(self._group, self._keys, remaining)
            remaining -= time.monotonic() - started

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        # BROKER CALL: acknowledge all of them in one round trip (XACK, a commit, a batch).
        self._broker.ack(self._group, messages)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        # BROKER CALL: deliver it again no sooner than `delay` (natively, or by republishing
        # with a due time and acknowledging the original).
        self._broker.nack(self._group, message, delay)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        # BROKER CALL: renew each message's lease for another redelivery timeout.
        self._broker.extend(self._group, messages, self._lease)

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        # BROKER CALL: deliverable now, no attempt counted (without it, core nacks each).
        self._broker.release(self._group, messages)
