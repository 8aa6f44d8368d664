"""Building the configured backend for a command, saying so in words when it is the fallback.

Every command gets its backend from `load_backend()`, exactly as an application does;
nothing here knows about a particular broker.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.deadlines import bounded
from abe.backends.message_queue.base.interface import Backend
from abe.backends.message_queue.loader import (
    BACKEND_VARIABLE,
    MemoryFallbackWarning,
    available_backends,
    load_backend,
)
from abe.cli.errors import CommandError
from abe.cli.output import note
from abe.types import MessageQueueBackendProtocol

__all__ = [
    "CLOSE_TIMEOUT",
    "FALLBACK_NOTE",
    "LoadedBackend",
    "close_backend",
    "delete_own_group",
    "delete_own_keys",
    "load",
    "origin_of",
    "require_base",
]

log = logging.getLogger("abe.cli")

FALLBACK_NOTE = f"backend: memory (embedded default; set {BACKEND_VARIABLE} to use a broker)"
"""Said instead of the loader's MemoryFallbackWarning when no provider is installed."""

CLOSE_TIMEOUT = 10.0
"""Longest a command waits for a backend to close before it moves on."""


@dataclass(frozen=True)
class LoadedBackend:
    """A backend built by `load_backend()`, and whether it is the memory fallback."""

    backend: Backend | MessageQueueBackendProtocol
    fallback: bool


def load() -> LoadedBackend:
    """`load_backend()`, with its MemoryFallbackWarning turned into `fallback=True`.

    Other warnings are passed on unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = load_backend()
    fallback = False
    for warning in caught:
        if issubclass(warning.category, MemoryFallbackWarning):
            fallback = True
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return LoadedBackend(backend, fallback)


def require_base(backend: Backend | MessageQueueBackendProtocol, command: str) -> BaseBackend:
    """The backend, if it builds on BaseBackend (deliveries, acks, batches); else a clear error."""
    if isinstance(backend, BaseBackend):
        return backend
    raise CommandError(
        f"the backend {type(backend).__name__} does not build on abe's BaseBackend, so "
        f"`abe {command}` cannot use it (it needs subscribe(), publish_many() and "
        f"acknowledgements); ask its maintainers to build on abe.BaseBackend"
    )


async def close_backend(
    backend: Backend | MessageQueueBackendProtocol, timeout: float = CLOSE_TIMEOUT
) -> None:
    """Close the backend if it can be closed, within `timeout`; a failure is only a warning."""
    close = getattr(backend, "close", None)
    if not callable(close):
        return
    try:
        await bounded(close(), timeout)
    except asyncio.TimeoutError:
        log.warning("closing the backend did not finish within %.1f s; moving on", timeout)
    except Exception as exc:
        log.warning("closing the backend failed (%s: %s)", type(exc).__name__, exc)


async def delete_own_keys(
    backend: BaseBackend, keys: list[str], timeout: float = CLOSE_TIMEOUT
) -> None:
    """Delete the keys a command made for itself, within `timeout`; a failure is only reported.

    A backend that cannot delete keys gets a note naming what was left on the broker.
    """
    try:
        await bounded(backend.delete_keys(keys), timeout)
    except asyncio.TimeoutError:
        log.warning(
            "deleting this run's keys (%s) did not finish within %.1f s; they may be left on "
            "the broker",
            ", ".join(keys),
            timeout,
        )
    except NotImplementedError:
        left = ", ".join(keys)
        note(f"left on the broker (the {backend.name} backend cannot delete keys): {left}")
    except Exception as exc:
        log.warning(
            "deleting this run's keys (%s) failed (%s: %s)",
            ", ".join(keys),
            type(exc).__name__,
            exc,
        )


async def delete_own_group(
    backend: BaseBackend, group: str, keys: Sequence[str], timeout: float = CLOSE_TIMEOUT
) -> None:
    """Delete a group a command made for itself, within `timeout`; a failure is only reported."""
    try:
        await bounded(backend.delete_group(group, keys), timeout)
    except NotImplementedError:
        note(
            f"left on the broker (the {backend.name} backend cannot delete a group): group "
            f"{group} on {', '.join(keys)}"
        )
    except Exception as exc:
        log.warning(
            "deleting the group %s on %s failed (%s: %s); it may be left on the broker",
            group,
            ", ".join(keys),
            type(exc).__name__,
            exc or "no detail",
        )


def origin_of(name: str) -> tuple[str | None, str | None]:
    """The distribution and version that registered the backend `name`, without importing."""
    for entry in available_backends():
        if entry.name == name:
            return entry.distribution, entry.version
    return None, None
