"""The backend class: abe on this broker (out of the box, a broker in this process).

abe-core's `BaseBackend` does everything that is the same on every broker: key and
payload checks before any I/O, the JSON body and the `abe-*` headers, message ids,
ack-on-next `consume()`, prefetch bounds, batched acknowledgements, poison bodies,
dead letters, retries and error translation. This class supplies the broker calls.

Each `# BROKER CALL` marks a call to abe's in-process `MemoryBroker`: replace it with
your client library's call, doing what its comment says. `grep -rn "BROKER CALL" src`
lists them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from abe import MemoryBroker
from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.base.keys import KeyRules
from abe.backends.message_queue.base.receiver import Receiver
from abe.settings import Variable, redact_url

from abe_mq_example._errors import translate_error
from abe_mq_example._receiver import ExampleReceiver
from abe_mq_example._settings import NAME, VARIABLES, ExampleSettings

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline
    from typing_extensions import Self

__all__ = ["ExampleBackend"]


class ExampleBackend(BaseBackend):
    """abe on the `example` broker.

    Build it with `from_env()`, or from settings: `ExampleBackend(settings)`.
    Building one does no I/O: it connects on its first publish or subscription.
    """

    name: ClassVar[str] = NAME
    # What the broker really does. The contract suite skips the tests of what is
    # declared missing and fails what is declared but does not hold.
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,  # different groups each receive every message of a key
        per_key_ordering=True,  # one consumer receives a key's messages in publish order
        persistence=False,  # acknowledged messages survive a broker restart (in-process: no)
        native_delay=True,  # the broker itself holds back a nacked message for its delay
        max_payload_bytes=1_048_576,  # the largest JSON body that really gets through
        remote=False,  # True once the broker is another process; see tests/test_contract.py
    )
    # The broker's rule for keys (topic / queue / stream names): length and characters.
    # abe refuses other keys with InvalidKeyError before any I/O, naming this rule.
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=249,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '.', '_' and '-'",
        broker=NAME,
    )
    # Also available: `group_rules` when the broker restricts group names further;
    # `reserved_headers` for header names the wire format uses itself; and
    # `enforce_operation_timeout = True` when the client library can block forever
    # (abe-core then bounds every call; prefer the client's own timeouts).
    variables: ClassVar[tuple[Variable, ...]] = VARIABLES

    def __init__(self, settings: ExampleSettings | None = None) -> None:
        settings = settings or ExampleSettings()
        super().__init__(settings)
        self.settings: ExampleSettings = settings
        self._broker: MemoryBroker | None = None  # your client, made on first use
        self._connecting = asyncio.Lock()

    @classmethod
    def from_env(cls) -> Self:
        """A backend configured by the environment (the README lists the variables)."""
        return cls(ExampleSettings.from_env())

    async def _client(self) -> MemoryBroker:
        """The connected client, made on first use; concurrent first calls share one."""
        if self._broker is None:
            async with self._connecting:
                if self._broker is None:
                    # BROKER CALL: connect with your client library to settings.url,
                    # authenticating with settings.token.reveal() (hand the secret to the
                    # client and nowhere else). Bound the attempt by
                    # settings.operation_timeout. Refused credentials must raise (map them
                    # to AuthenticationError), an unreachable broker too (to
                    # BackendUnavailableError). After this, the client should reconnect by
                    # itself when the broker comes back.
                    self._broker = MemoryBroker.named(self.settings.url)
        return self._broker

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Write `messages` to `key`, in order; one call for a batch (publish_many)."""
        broker = await self._client()
        # BROKER CALL: write each message to `key` in order: `message.body` (the payload's
        # JSON, bytes) is the whole body and `message.headers` go in the broker's native
        # headers or attributes. Return once the broker has stored them. For several
        # messages use the broker's batch path (pipeline, producer batch, async publish
        # then await every acknowledgement). If it refuses only some, raise
        # abe.errors.PublishError(key, {index: reason}, len(messages)). If it is down,
        # raise within settings.operation_timeout (your error map turns that into
        # BackendUnavailableError).
        broker.append(key, messages)

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        """Join `group` on `keys`, creating what the broker needs, and return the reader."""
        broker = await self._client()
        for key in keys:
            # BROKER CALL: create the group (consumer group, durable consumer, queue) on
            # `key` if it does not exist, starting from the OLDEST retained message, so
            # nothing published before the group's first worker is lost. Joining a group
            # that exists keeps its position. Messages a member received but did not
            # acknowledge within settings.redelivery_timeout go to another member.
            broker.join(key, group)
        lease = self.settings.redelivery_timeout
        return ExampleReceiver(broker, group, tuple(keys), lease)

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete `keys` with their messages and every group's state (`abe check` cleans up)."""
        broker = await self._client()
        for key in keys:
            # BROKER CALL: delete what the broker keeps for `key` (topic, stream, queue, and
            # the groups on it), so that a later publish to `key` starts afresh. A key that
            # does not exist is not an error. Optional: a broker that cannot delete raises
            # NotImplementedError, and abe's commands then say what they left behind.
            broker.delete(key)

    async def _close(self) -> None:
        """Release the connections; called once, after every subscription has closed."""
        # BROKER CALL: close the client and wait until its connections and tasks are gone
        # (the contract suite fails on a ResourceWarning or a task left pending).
        self._broker = None

    def _translate_error(self, error: Exception) -> Exception:
        """Map a client-library exception to the most specific abe error (see _errors.py)."""
        return translate_error(error, self._describe())

    def _describe(self) -> str:
        """Where the broker is, for reprs and error messages; never holds a secret."""
        return redact_url(self.settings.url)

    def raw_baseline(self) -> RawBaseline | None:
        """The `abe bench` workloads written with the client library alone; None for now.

        Optional. Return an `abe.benchmarking.RawBaseline` built from `self.settings`
        (publish, publish_many and end_to_end written directly with your client, see the
        abe.benchmarking docstring) and `abe bench` reports abe's cost over the raw client.
        """
        return None
