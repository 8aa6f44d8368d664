"""Code written for the upstream protocol runs unchanged (issue 19).

The protocol page's own example skeleton, with an in-process client in place of Redis
(tests/upstream/), type-checks under `mypy --strict` against abe-core and runs under
AsyncLoopConsumer; the old import paths resolve with a DeprecationWarning.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from abe import AsyncLoopConsumer, MemoryBackend
from abe.backends.message_queue.protocol_backend import ProtocolBackend, ProtocolOnlyWarning

UPSTREAM = Path(__file__).parent / "upstream"


def _skeleton() -> ModuleType:
    sys.path.insert(0, str(UPSTREAM))
    try:
        return importlib.import_module("skeleton")
    finally:
        sys.path.remove(str(UPSTREAM))


def test_the_skeleton_type_checks_against_abe_core() -> None:
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-pretty",
            "--no-error-summary",
            "skeleton.py",
        ],
        cwd=UPSTREAM,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    source = (UPSTREAM / "skeleton.py").read_text().splitlines()
    init = 1 + next(n for n, line in enumerate(source) if "def __init__(self, client)" in line)
    # The page's own `def __init__(self, client)` leaves `client` unannotated; nothing else
    # (no incompatible default or override against abe's types) may be reported.
    assert len(errors) == 1, checked.stdout + checked.stderr
    assert errors[0].startswith(f"skeleton.py:{init}: error: Function is missing a type")
    assert errors[0].endswith("[no-untyped-def]")


@pytest.mark.asyncio
async def test_the_skeleton_runs_under_async_loop_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "inprocess://skeleton-run")
    skeleton = _skeleton()
    backend = skeleton.RedisBackend.from_env()
    for number in range(5):
        await backend.publish("orders", {"order_id": number})
    handled: list[dict[str, Any]] = []
    failed_once: set[int] = set()
    done = asyncio.Event()

    async def handle(order: dict[str, Any]) -> None:
        if order["order_id"] == 3 and 3 not in failed_once:
            failed_once.add(3)
            raise RuntimeError("a first attempt fails; the consumer retries it")
        handled.append(order)
        if len(handled) == 5:
            done.set()

    with pytest.warns(ProtocolOnlyWarning, match="at most once"):
        consumer = AsyncLoopConsumer(backend, "billing", retry_delay=0.01)
    worker = asyncio.ensure_future(consumer.run(handle))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await consumer.shutdown()
        await worker
    assert sorted(order["order_id"] for order in handled) == [0, 1, 2, 3, 4]
    assert consumer.stats.processed == 5
    assert consumer.stats.retried == 1


@pytest.mark.asyncio
async def test_a_protocol_backend_dead_letters_through_its_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "inprocess://skeleton-dead-letters/orders")
    skeleton = _skeleton()
    backend = skeleton.RedisBackend.from_env()
    await backend.publish("orders", {"order_id": 7})
    attempts: list[int] = []

    async def always_fails(order: dict[str, Any]) -> None:
        attempts.append(order["order_id"])
        raise ValueError("cannot bill")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProtocolOnlyWarning)
        consumer = AsyncLoopConsumer(
            backend, "billing", keys=["orders"], max_attempts=2, retry_delay=0.01
        )
    worker = asyncio.ensure_future(consumer.run(always_fails))
    client = backend._client
    try:
        await asyncio.wait_for(client.entry_on("orders-dlq"), 10)
    finally:
        await consumer.shutdown()
        await worker
    letters = [fields for key, fields in client.entries if key == "orders-dlq"]
    assert attempts == [7, 7]
    assert letters == [{"data": '{"order_id": 7}'}]
    assert consumer.stats.dead_lettered == 1


@pytest.mark.asyncio
async def test_load_backend_gives_the_whole_interface_over_a_protocol_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "inprocess://skeleton-wrapped")
    skeleton = _skeleton()
    with pytest.warns(ProtocolOnlyWarning):
        wrapped = ProtocolBackend(skeleton.RedisBackend.from_env())
    async with wrapped as backend:
        await backend.publish_many("orders", [{"n": 1}, {"n": 2}])
        got = []
        async for payload in backend.consume(group="g"):
            got.append(payload)
            if len(got) == 2:
                break
        assert got == [{"n": 1}, {"n": 2}]


def test_a_backend_with_built_on_abe_is_never_wrapped() -> None:
    backend = MemoryBackend()
    assert AsyncLoopConsumer(backend, keys="k").backend is backend


def test_something_that_is_no_backend_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"needs a message-queue backend.*got object"):
        AsyncLoopConsumer(object(), keys="k")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "abe.backends.message_queue.service.memory:MemoryBackend",
            "abe.backends.message_queue.memory:MemoryBackend",
        ),
        (
            "abe.backends.message_queue.loader:BACKEND_ENTRY_POINT_GROUP",
            "abe.backends.message_queue.loader:ENTRY_POINT_GROUP",
        ),
        (
            "abe.backends.message_queue.base.consumer:MessageQueueConsumerProtocol",
            "abe.backends.message_queue.consumer:ConsumerProtocol",
        ),
        (
            "abe.backends.message_queue.base.consumer:AsyncLoopConsumer",
            "abe.backends.message_queue.consumer:AsyncLoopConsumer",
        ),
    ],
)
def test_old_import_paths_resolve_with_a_deprecation_warning(old: str, new: str) -> None:
    old_module, old_name = old.split(":")
    new_module, new_name = new.split(":")
    with pytest.warns(DeprecationWarning, match=f"{new_module}.{new_name}"):
        found = getattr(importlib.import_module(old_module), old_name)
    assert found is getattr(importlib.import_module(new_module), new_name)
