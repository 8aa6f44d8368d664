"""ExampleReceiver: reads one consumer group over a fixed set of keys.

abe-core's `Subscription` drives it: it asks `fetch` for at most as many messages as
the consumer may still hold, decodes the bodies, dead-letters the ones it cannot,
batches acknowledgements into `ack`, calls `extend` for handlers that still run, and
`release` for messages it fetched but never handed out. This class only moves
messages between the broker and those calls.

Out of the box the broker is abe's in-process `MemoryBroker`. Each `# BROKER CALL`
marks a call to replace with your client library's, doing what its comment says.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from abe import MemoryBroker
from abe.backends.message_queue.base.codec import IncomingMessage
from abe.backends.message_queue.base.receiver import Receiver

__all__ = ["ExampleReceiver"]


class ExampleReceiver(Receiver):
    """One member of `group` reading `keys`; unfinished work returns after `lease` seconds."""

    def __init__(
        self, broker: MemoryBroker, group: str, keys: tuple[str, ...], lease: float
    ) -> None:
        self._broker = broker  # your client, shared with the backend
        self._group = group
        self._keys = keys
        self._lease = lease  # settings.redelivery_timeout
        self._turn = itertools.count()

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        """Return 1 to `max_messages` messages, or none once `timeout` seconds pass.

        Cancellation (the subscription cancels a pending fetch when it closes) must leave
        the receiver usable and lose nothing: an unacknowledged message comes back later.
        """
        remaining = timeout
        while True:
            # BROKER CALL: one read for this group over self._keys, of at most max_messages,
            # waiting at most `remaining` seconds (a blocking read: XREADGROUP BLOCK, a pull
            # request, a long poll). Deliver in publish order per key. Return each message as
            # IncomingMessage(key, body bytes, headers dict, attempt, broker_id, handle):
            # - attempt is 1 on the first delivery and rises on every redelivery (use the
            #   broker's delivery count where it keeps one);
            # - handle is whatever ack/nack/extend need later (offset, receipt, entry id);
            # - messages delivered but not acknowledged within self._lease seconds, and
            #   nacked ones whose delay has passed, must come back here (to any member);
            # - a broker that went away: raise (your error map turns it into
            #   BackendUnavailableError); the subscription logs it and retries with backoff.
            taken = self._broker.take(
                self._group, self._keys, max_messages, self._lease, next(self._turn)
            )
            if taken or remaining <= 0:
                return taken
            started = time.monotonic()
            await self._broker.wait(self._group, self._keys, remaining)
            remaining -= time.monotonic() - started

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        """Mark messages done for this group, so they are never delivered to it again.

        abe-core batches acknowledgements: use the broker's batch path, not one call each.
        """
        # BROKER CALL: acknowledge every message in one round trip where the broker can
        # (XACK with many ids, one offset commit, DeleteMessageBatch).
        self._broker.ack(self._group, messages)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        """Deliver `message` again, to any member of the group, no sooner than `delay` seconds."""
        # BROKER CALL: a negative acknowledgement with a delay where the broker has one
        # (capabilities.native_delay=True); otherwise hold it back yourself, e.g. by
        # republishing it with a due time, then acknowledging the original.
        self._broker.nack(self._group, message, delay)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        """Push back the redelivery of messages whose handlers are still running.

        The consumer calls this every third of the redelivery timeout.
        """
        # BROKER CALL: renew each message's lease / visibility for another
        # settings.redelivery_timeout (claim it again, "in progress", change visibility).
        # A broker that redelivers only when a member leaves needs nothing here.
        self._broker.extend(self._group, messages, self._lease)

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        """Give back messages fetched but never handed to the application, as if undelivered."""
        # BROKER CALL: make them deliverable now without counting this delivery as an
        # attempt, if the broker can. Delete this method and abe-core nacks each with no
        # delay instead.
        self._broker.release(self._group, messages)

    async def close(self) -> None:
        """Release what this member holds; its unacknowledged messages are delivered again later."""
        # BROKER CALL: cancel pending reads, leave the group or close the consumer. Leave
        # the group's position on the broker: other members and later workers resume there.
