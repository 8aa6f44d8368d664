"""Every `abe` command test runs on the memory backend, on an in-process broker of its own."""

from __future__ import annotations

import os
import uuid

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
