"""Every `abe` command test runs on the memory backend, on an in-process broker of its own."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from abe import MemoryBroker


@pytest.fixture(autouse=True)
def memory_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """QUEUE_BACKEND=memory and a broker name unique to the test; returns that name."""
    for name in list(os.environ):
        if name.startswith(("ABE_", "QUEUE_BACKEND")):
            monkeypatch.delenv(name)
    broker = f"cli-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("QUEUE_BACKEND", "memory")
    monkeypatch.setenv("ABE_MEMORY_BROKER", broker)
    return broker


@pytest.fixture
def broker(memory_env: str) -> MemoryBroker:
    """The in-process broker that the commands of this test share."""
    return MemoryBroker.named(memory_env)


@dataclass(frozen=True)
class DeletedKey:
    """What a key held when a command deleted it."""

    messages: list[dict[str, Any]]
    pending: dict[str, int]  # by group


@pytest.fixture
def deleted(broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch) -> dict[str, DeletedKey]:
    """The keys the commands of this test delete, in order, with what each held then."""
    seen: dict[str, DeletedKey] = {}
    delete = broker.delete

    def record(key: str) -> None:
        pending = {group: broker.pending(key, group) for group in broker.groups(key)}
        seen[key] = DeletedKey(broker.messages(key), pending)
        delete(key)

    monkeypatch.setattr(broker, "delete", record)
    return seen
