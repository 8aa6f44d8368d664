"""`abe bench`'s three workloads written directly with aiobotocore: what abe costs over it.

The same endpoint, credentials and client configuration as the backend, its own client,
and the same bytes on the wire (`bench_payload()` encoded as abe encodes it). It writes
the plain body with no attributes, as a raw producer would:

    publish       SendMessage per message
    publish_many  SendMessageBatch, 10 entries a call, up to 8 calls in flight per batch
    end_to_end    ReceiveMessage (long poll, 10 at most) + DeleteMessageBatch of what came,
                  while one publisher sends with SendMessage
    drain_ack_each  the backlog sent first (as publish_many), then ReceiveMessage (long
                  poll, 10 at most) on each key's queue and DeleteMessage per message
    drain_batched   the same with one DeleteMessageBatch per receive
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiobotocore  # type: ignore[import-untyped]
import botocore  # type: ignore[import-untyped]

from abe.benchmarking import (
    Arrivals,
    DrainClock,
    Measurement,
    Progress,
    Workload,
    bench_payload,
)
from abe.provider import SecretFilter
from abe_mq_sqs._client import BATCH_ENTRIES, connect, queue_name
from abe_mq_sqs._errors import CREDENTIAL_PATTERNS
from abe_mq_sqs._settings import SqsSettings
from abe_mq_sqs._version import __version__

__all__ = ["RawSqsBaseline"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_CONCURRENCY = 8
_LOGGERS = ("botocore", "aiobotocore")


class RawSqsBaseline:
    """The three workloads on one aiobotocore client of their own (see the module docstring)."""

    def __init__(self, settings: SqsSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._created: list[str] = []
        # Its client logs the same credentials as the backend's.
        self._secrets = SecretFilter(settings.secrets(), patterns=CREDENTIAL_PATTERNS)

    @property
    def name(self) -> str:
        return f"aiobotocore {aiobotocore.__version__} (botocore {botocore.__version__})"

    async def _sqs(self) -> Any:
        if self._client is None:
            self._secrets.install(*_LOGGERS)
            self._client = await connect(self._settings, f"abe-mq-sqs-baseline/{__version__}")
            self._secrets.install(*_LOGGERS)
        return self._client

    async def _queue(self, key: str) -> str:
        """Create the workload's own queue (before any clock starts) and return its URL."""
        client = await self._sqs()
        name = queue_name(key, self._settings.queue_prefix)
        created = await client.create_queue(QueueName=name)
        url = str(created["QueueUrl"])
        self._created.append(url)
        return url

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        client = await self._sqs()
        url = await self._queue(workload.key)
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for seq in range(workload.messages):
            body = _ENCODER.encode(bench_payload(seq, workload.payload_bytes))
            before = clock()
            await client.send_message(QueueUrl=url, MessageBody=body)
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        client = await self._sqs()
        url = await self._queue(workload.key)
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            bodies = [
                _ENCODER.encode(bench_payload(seq, workload.payload_bytes))
                for seq in range(first, last)
            ]
            before = clock()
            await _send_all(client, url, bodies)
            del bodies  # freed when sent, as abe frees its bodies on return
            latencies.append(clock() - before)
            progress(last)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        client = await self._sqs()
        url = await self._queue(workload.key)
        settings = self._settings
        arrivals = Arrivals(workload, progress)

        async def receive() -> None:
            while not arrivals.complete:
                response = await client.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=BATCH_ENTRIES,
                    WaitTimeSeconds=settings.wait_time_seconds,
                    VisibilityTimeout=settings.visibility_timeout,
                )
                messages = response.get("Messages", [])
                for message in messages:
                    arrivals.record(json.loads(message["Body"]))
                if not messages:
                    continue
                await client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                        for index, message in enumerate(messages)
                    ],
                )

        async def send() -> None:
            for seq in range(workload.messages):
                body = _ENCODER.encode(bench_payload(seq, workload.payload_bytes))
                await client.send_message(QueueUrl=url, MessageBody=body)
                await asyncio.sleep(0)

        return await arrivals.measure(send, receive)

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog received 10 at a time, DeleteMessage for each message."""
        return await self._drain(workload, progress, delete_each=True)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog received 10 at a time, one DeleteMessageBatch per receive."""
        return await self._drain(workload, progress, delete_each=False)

    async def _drain(
        self, workload: Workload, progress: Progress, *, delete_each: bool
    ) -> Measurement:
        client = await self._sqs()
        urls = {key: await self._queue(key) for key in workload.all_keys}
        for key, payloads in workload.backlog():  # sent before the clock starts
            await _send_all(client, urls[key], [_ENCODER.encode(body) for body in payloads])
        settings = self._settings
        clock = DrainClock(workload, progress)

        async def drain(url: str) -> None:
            while not clock.complete:
                response = await client.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=BATCH_ENTRIES,
                    WaitTimeSeconds=settings.wait_time_seconds,
                    VisibilityTimeout=settings.visibility_timeout,
                )
                messages = response.get("Messages", [])
                for message in messages:
                    clock.record(json.loads(message["Body"]))
                    if delete_each:
                        await client.delete_message(
                            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"]
                        )
                if messages and not delete_each:
                    deleted = await client.delete_message_batch(
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                            for index, message in enumerate(messages)
                        ],
                    )
                    if deleted.get("Failed"):
                        raise RuntimeError(f"DeleteMessageBatch refused {deleted['Failed'][:1]}")

        await clock.run_until_complete([drain(url) for url in urls.values()])
        return clock.measurement()

    async def close(self) -> None:
        """Delete the queues the baseline made, then close its client."""
        try:
            if self._client is not None:
                for url in self._created:
                    with contextlib.suppress(Exception):
                        await self._client.delete_queue(QueueUrl=url)
        finally:
            self._created.clear()
            client, self._client = self._client, None
            try:
                if client is not None:
                    await client.__aexit__(None, None, None)
            finally:
                self._secrets.uninstall()


async def _send_all(client: Any, url: str, bodies: list[str]) -> None:
    """`bodies` with SendMessageBatch, 10 a call, up to 8 calls in flight."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def send(entries: list[dict[str, str]]) -> None:
        async with gate:
            response = await client.send_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch refused {response['Failed'][:1]}")

    await asyncio.gather(
        *(
            send(
                [
                    {"Id": str(index), "MessageBody": body}
                    for index, body in enumerate(bodies[start : start + BATCH_ENTRIES])
                ]
            )
            for start in range(0, len(bodies), BATCH_ENTRIES)
        )
    )
