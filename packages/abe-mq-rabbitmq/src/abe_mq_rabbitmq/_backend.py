"""The backend class: abe on this broker (out of the box, a broker in this process).

abe-core's `BaseBackend` does what is the same on every broker (checks before any I/O,
JSON and `abe-*` headers, ids, acks, prefetch, dead letters, retries, errors, secrets);
this class makes the broker calls. Each `# BROKER CALL` marks a call to abe's in-process
`MemoryBroker` to replace with your client's (`grep -rn "BROKER CALL" src` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from abe import MemoryBroker
from abe.provider import (
    BaseBackend,
    Capabilities,
    ErrorMap,
    KeyRules,
    LazyClient,
    OutgoingMessage,
    Receiver,
    redact_url,
)

from abe_mq_rabbitmq._errors import ERRORS
from abe_mq_rabbitmq._receiver import RabbitmqReceiver
from abe_mq_rabbitmq._settings import RabbitmqSettings

__all__ = ["RabbitmqBackend"]


class RabbitmqBackend(BaseBackend):
    """abe on the `rabbitmq` broker; building one does no I/O."""

    name: ClassVar[str] = "rabbitmq"
    # What the broker really does: the contract suite fails a declared one that does not hold.
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,  # different groups each receive every message of a key
        per_key_ordering=True,  # one consumer receives a key's messages in publish order
        persistence=False,  # acknowledged messages survive a broker restart (in-process: no)
        native_delay=True,  # the broker itself holds back a nacked message for its delay
        max_payload_bytes=1_048_576,  # the largest JSON body that really gets through
        remote=False,  # True once the broker is another process; see tests/test_contract.py
    )
    # Keys the broker accepts; others get InvalidKeyError before any I/O.
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=249,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '.', '_' and '-'",
        broker="rabbitmq",
    )
    settings_class: ClassVar[type[RabbitmqSettings]] = RabbitmqSettings
    errors: ClassVar[ErrorMap] = ERRORS
    # client_loggers = ("yourclient",) keeps the settings' secrets out of its logs

    def __init__(self, settings: RabbitmqSettings | None = None) -> None:
        super().__init__(settings or RabbitmqSettings())
        self.settings: RabbitmqSettings = settings or RabbitmqSettings()
        # One client, made on first use, shared with every receiver.
        self.client: LazyClient[MemoryBroker] = LazyClient(
            self._connect, self._disconnect, timeout=self.settings.operation_timeout, what=self.name
        )

    async def _connect(self) -> MemoryBroker:
        # BROKER CALL: connect to settings.url, authenticating with settings.token.reveal()
        # (to the client and nowhere else); the client then reconnects by itself.
        return MemoryBroker.named(self.settings.url)

    async def _disconnect(self, broker: MemoryBroker) -> None:
        # BROKER CALL: close the client and wait until its connections and tasks are gone.
        pass

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Write `messages` to `key` in order; one round trip for a batch (publish_many)."""
        broker = await self.client.get()
        # BROKER CALL: write `message.body` (the payload's JSON) as the whole body with
        # `message.headers` as the broker's headers; return once the broker stored them.
        # Use the batch path for several; refused ones: raise abe.errors.PublishError.
        broker.append(key, messages)

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        """Join `group` on `keys` (a new group starts from the oldest message) and read."""
        broker = await self.client.get()
        for key in keys:
            # BROKER CALL: create the group on `key` if missing, from the OLDEST retained
            # message; joining one that exists keeps its position.
            broker.join(key, group)
        lease = self.settings.redelivery_timeout
        return RabbitmqReceiver(broker, group, tuple(keys), lease)

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete `keys` with their messages and groups (`abe check` cleans up with it)."""
        broker = await self.client.get()
        for key in keys:
            broker.delete(key)  # BROKER CALL: delete the topic/stream/queue; absent is fine

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        broker = await self.client.get()  # `abe consume` reads only the keys that exist
        return [key for key in keys if broker.exists(key)]  # BROKER CALL: creating none

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        broker = await self.client.get()  # `abe consume` deletes the group it made
        for key in keys:
            broker.leave(key, group)  # BROKER CALL: drop the group (its position); absent: fine

    async def _close(self) -> None:
        await self.client.close()

    def _describe(self) -> str:  # where the broker is, for reprs and errors: no secret
        return redact_url(self.settings.url)
