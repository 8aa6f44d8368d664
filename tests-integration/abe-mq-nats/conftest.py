"""Fixtures of abe-mq-nats' integration tests (helpers live in abe_mq_nats_testing.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from abe_mq_nats_testing import Janitor, settings_for  # noqa: E402

from abe_mq_nats import NatsBackend  # noqa: E402


@pytest_asyncio.fixture
async def nats_janitor(nats_broker: Any) -> AsyncIterator[Janitor]:
    """Deletes, after the test, every stream its backends and raw writers created."""
    janitor = Janitor(nats_broker.url)
    try:
        yield janitor
    finally:
        for backend in janitor.backends:
            await backend.close()
        await janitor.clean()


@pytest.fixture
def make_backend(nats_broker: Any, nats_janitor: Janitor) -> Any:
    """Builds backends on the session broker (short timeouts), cleaned up after the test."""

    def make(**overrides: Any) -> NatsBackend:
        return nats_janitor.track(NatsBackend(settings_for(nats_broker.url, **overrides)))

    return make
