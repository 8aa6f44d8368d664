# The protocol page's "Example provider skeleton", copied verbatim (its class, unchanged),
# with the imports it leaves out, and `redis` an in-process client of the same shape
# (tests/upstream/inprocess_redis.py). test_upstream.py type-checks and runs it.
import json
import os

import inprocess_redis as redis

from typing import AsyncIterator

from abe.types import (
MessageQueueBackendProtocol,
MessageQueueKey,
MessageQueuePayload,
MessageQueueMessage,
ConsumerGroup,
)


class RedisBackend(MessageQueueBackendProtocol):
    def __init__(self, client) -> None:
        self._client = client

    @classmethod
    def from_env(cls) -> "RedisBackend":
        url = os.environ["REDIS_URL"]
        client = redis.AsyncRedis.from_url(url)
        return cls(client)

    async def publish(self, key: MessageQueueKey, payload: MessageQueuePayload) -> None:
        await self._client.xadd(key, {"data": json.dumps(payload)})

    async def consume(self, *, group: ConsumerGroup = None) -> AsyncIterator[MessageQueueMessage]:
        async for entry in self._client.xreadgroup(group or "default", ...):
            yield json.loads(entry["data"])
