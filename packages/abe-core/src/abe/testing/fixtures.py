"""The hooks a provider fills in for the contract suite, as pytest fixtures it overrides.

Each hook fails with instructions until a subclass overrides it, except where the
backend's declared capabilities make it unnecessary (an in-process broker cannot be
restarted or unreachable, so those hooks are never asked for).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import pytest
import pytest_asyncio

from abe.backends.message_queue.base.backend import BaseBackend

__all__ = [
    "BackendFactory",
    "Backends",
    "ContractFixtures",
    "EnvironmentCase",
    "MalformedWrite",
    "RawWriter",
    "RestartableBroker",
    "SecretCase",
    "TlsMismatch",
]


class BackendFactory(Protocol):
    """Builds a new backend on the broker under test.

    Use a short redelivery timeout (1 to 3 seconds): the suite waits up to a few times
    that for redeliveries. `prefetch=None` means the backend's usual bound.
    """

    def __call__(self, *, prefetch: int | None = None) -> BaseBackend: ...


RawWriter = Callable[[str, bytes], Awaitable[None]]
"""Writes `body` to `key` with the broker's own client, as a foreign producer would.

It raises when the broker cannot carry these bytes as they are (SQS: bytes that are not
UTF-8 text), rather than writing something else.
"""


@dataclass(frozen=True)
class MalformedWrite:
    """A message the broker's own client can write that abe's wire format cannot read.

    For brokers whose messages have parts beyond the body (a Redis stream entry without
    its `data` field, say). `write(key)` writes one; its dead letter's reason must
    contain `reason`.
    """

    what: str
    write: Callable[[str], Awaitable[None]]
    reason: str


@dataclass(frozen=True)
class TlsMismatch:
    """A backend that asks for TLS and holds `secret`, and a plaintext broker to aim it at.

    `backend_at(host, port)` builds the backend for that address (configured with TLS and
    with `secret` as its credential); `broker` is the (host, port) of a real broker that
    does not offer TLS. The suite puts a recording proxy between the two.
    """

    backend_at: Callable[[str, int], BaseBackend]
    broker: tuple[str, int]
    secret: str


@dataclass(frozen=True)
class EnvironmentCase:
    """Environment variables that `from_env()` must refuse, and the names it must blame."""

    env: dict[str, str]
    variables: tuple[str, ...]


@dataclass(frozen=True)
class SecretCase:
    """Environment that configures `secret` and a broker that will refuse or not answer."""

    env: dict[str, str]
    secret: str


@dataclass(frozen=True)
class RestartableBroker:
    """A broker the test owns: `backend_factory` builds backends on it, `restart` bounces it."""

    backend_factory: BackendFactory
    restart: Callable[[], Awaitable[None]]


@dataclass
class Backends:
    """Builds backends through the provider's factory and closes every one after the test."""

    factory: BackendFactory
    created: list[BaseBackend] = field(default_factory=list)

    def new(self, *, prefetch: int | None = None) -> BaseBackend:
        """A new backend from the factory, closed when the test ends."""
        backend = self.factory(prefetch=prefetch)
        self.created.append(backend)
        return backend

    async def close_all(self) -> None:
        """Close every backend made for this test."""
        for backend in self.created:
            await backend.close()


def _missing(hook: str, purpose: str) -> NoReturn:
    pytest.fail(
        f"the contract suite needs the {hook!r} fixture: {purpose}. Override it in your "
        f"contract test class (see abe.testing.ContractFixtures)"
    )


def _skip_unless_remote(backend_class: type[BaseBackend]) -> None:
    if not backend_class.capabilities.remote:
        pytest.skip(
            f"{backend_class.name}: the broker runs inside this process (capabilities.remote "
            f"is False), so it cannot be down, restarted, or refuse credentials"
        )


class ContractFixtures:
    """Fixtures the suite uses. A provider overrides the hooks marked "override"."""

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """Override: builds backends on the broker under test (short redelivery timeout)."""
        _missing("backend_factory", "a callable building a backend on the test broker")

    @pytest.fixture
    def write_raw(self) -> RawWriter:
        """Override: writes a raw body with the broker's own client (for poison bodies)."""
        _missing("write_raw", "an async callable (key, body) writing raw bytes")

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        """Override: environments `from_env()` must refuse, with the variables to blame."""
        _missing("invalid_environments", "a list of EnvironmentCase")

    @pytest.fixture
    def malformed_writes(self) -> list[MalformedWrite]:
        """Override where the broker's messages have parts beyond the body (see MalformedWrite)."""
        return []

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        """Override to add keys this broker refuses beyond empty, too long and whitespace."""
        return ()

    @pytest.fixture
    def backend_class(self, backend_factory: BackendFactory) -> type[BaseBackend]:
        """The class under test (building a backend does no I/O, so this costs nothing)."""
        return type(backend_factory())

    @pytest.fixture
    def restartable_broker(self, backend_class: type[BaseBackend]) -> RestartableBroker:
        """Override (remote brokers): a broker the test owns and can restart."""
        _skip_unless_remote(backend_class)
        _missing("restartable_broker", "a RestartableBroker the test can bounce")

    @pytest.fixture
    def unreachable_backend_factory(self, backend_class: type[BaseBackend]) -> BackendFactory:
        """Override (remote brokers): builds a backend pointed at an address nothing answers."""
        _skip_unless_remote(backend_class)
        _missing("unreachable_backend_factory", "a factory for a backend with no broker")

    @pytest.fixture
    def secret_environment(self, backend_class: type[BaseBackend]) -> SecretCase:
        """Override (remote brokers): an environment holding a secret the broker will refuse."""
        _skip_unless_remote(backend_class)
        _missing("secret_environment", "a SecretCase")

    @pytest.fixture
    def tls_mismatch(self, backend_class: type[BaseBackend]) -> TlsMismatch:
        """Override (remote brokers): a TLS-configured backend and a plaintext broker."""
        _skip_unless_remote(backend_class)
        _missing("tls_mismatch", "a TlsMismatch: a TLS backend factory and a plaintext broker")

    @pytest_asyncio.fixture
    async def backends(self, backend_factory: BackendFactory) -> AsyncIterator[Backends]:
        """Backends for one test, all closed when it ends."""
        made = Backends(backend_factory)
        try:
            yield made
        finally:
            await made.close_all()
