"""Finding and building the backend the environment asks for.

Providers announce themselves only through the entry-point group
`abe.backends.message_queue`; they are listed without being imported, and imported
only when chosen. The choice: the `name` argument, else `QUEUE_BACKEND`, else the
only installed provider, else the in-process memory backend with a warning.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from abe._deprecation import moved
from abe._version import __version__
from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.interface import Backend
from abe.backends.message_queue.protocol_backend import ProtocolBackend
from abe.errors import BackendNotFoundError
from abe.types import MessageQueueBackendProtocol

__all__ = [
    "BACKEND_VARIABLE",
    "ENTRY_POINT_GROUP",
    "BackendChoice",
    "BackendEntry",
    "MemoryFallbackWarning",
    "available_backends",
    "choose_backend",
    "load_backend",
    "load_backend_class",
]

ENTRY_POINT_GROUP = "abe.backends.message_queue"
"""The entry-point group providers register their backend class in."""
BACKEND_VARIABLE = "QUEUE_BACKEND"
"""The environment variable that names the backend to load."""
_MEMORY = "memory"


class MemoryFallbackWarning(UserWarning):
    """No provider is installed or chosen, so messages stay inside this process."""


@dataclass(frozen=True)
class BackendEntry:
    """One registered backend, known from its distribution's metadata without importing it."""

    name: str
    target: str
    distribution: str | None
    version: str | None

    @property
    def origin(self) -> str:
        """The distribution and version that registered it, for messages."""
        if self.distribution is None:
            return "an unknown distribution"
        return f"{self.distribution} {self.version or ''}".strip()

    def load_class(self) -> type[MessageQueueBackendProtocol]:
        """Import the backend class; failures name the distribution and the fix."""
        try:
            loaded = EntryPoint(self.name, self.target, ENTRY_POINT_GROUP).load()
        except Exception as exc:
            raise BackendNotFoundError(
                f"the {self.name!r} backend ({self.origin}) failed to import: "
                f"{type(exc).__name__}: {exc}. Reinstall it with its dependencies: "
                f"pip install --force-reinstall {self.distribution or 'abe-mq-' + self.name}"
            ) from exc
        missing = [
            method
            for method in ("publish", "consume", "from_env")
            if not callable(getattr(loaded, method, None))
        ]
        if not isinstance(loaded, type) or missing:
            what = (
                "is not a class" if not isinstance(loaded, type) else f"lacks {', '.join(missing)}"
            )
            raise BackendNotFoundError(
                f"the {self.name!r} backend ({self.origin}) points at {self.target!r}, which "
                f"{what}, so it is not a message-queue backend. Upgrade or uninstall "
                f"{self.distribution or 'that distribution'}"
            )
        return cast("type[MessageQueueBackendProtocol]", loaded)


def available_backends() -> list[BackendEntry]:
    """Every registered backend, sorted by name; the memory backend is always among them."""
    found: dict[tuple[str, str | None], BackendEntry] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        entry = _entry(point)
        found.setdefault((entry.name, entry.distribution), entry)
    if not any(name == _MEMORY for name, _ in found):
        found[(_MEMORY, None)] = BackendEntry(
            _MEMORY, "abe.backends.message_queue.memory:MemoryBackend", "abe-core", __version__
        )
    return sorted(found.values(), key=lambda entry: (entry.name, entry.distribution or ""))


@dataclass(frozen=True)
class BackendChoice:
    """The backend `load_backend()` builds, and why it is that one."""

    entry: BackendEntry
    reason: str
    fallback: bool = False
    """True when no provider is installed and the memory backend stands in."""


def choose_backend(
    name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    entries: Sequence[BackendEntry] | None = None,
) -> BackendChoice:
    """Which backend `load_backend(name)` builds, without importing or building it.

    Order: `name`, then `QUEUE_BACKEND`, then the only installed provider, then the
    memory backend. Raises BackendNotFoundError when the choice is unknown or ambiguous.
    """
    entries = available_backends() if entries is None else list(entries)
    requested = (os.environ if environ is None else environ).get(BACKEND_VARIABLE)
    if name is not None and name.strip():
        return BackendChoice(_entry_named(entries, name), "named by the caller")
    if requested is not None and requested.strip():
        entry = _entry_named(entries, requested)
        return BackendChoice(entry, f"chosen by {BACKEND_VARIABLE}={requested.strip()}")
    providers = [entry for entry in entries if entry.name != _MEMORY]
    if len(providers) > 1:
        listed = ", ".join(f"{entry.name} ({entry.origin})" for entry in providers)
        names = " or ".join(sorted({entry.name for entry in providers}))
        raise BackendNotFoundError(
            f"several message-queue backends are installed ({listed}) and none is chosen; "
            f"set {BACKEND_VARIABLE} to {names}, or pass load_backend(name)"
        )
    if providers:
        return BackendChoice(providers[0], "the only provider installed")
    memory = _entry_named(entries, _MEMORY)
    return BackendChoice(
        memory, "no provider installed: the embedded default, inside this process", True
    )


def load_backend_class(name: str) -> type[MessageQueueBackendProtocol]:
    """The backend class registered as `name`, or BackendNotFoundError saying how to get it."""
    return _entry_named(available_backends(), name).load_class()


def load_backend(name: str | None = None) -> Backend:
    """Build the configured backend from the environment.

    Order: `name`, then `QUEUE_BACKEND`, then the only installed provider. Several
    providers and none chosen is an error listing them; none installed falls back to
    the memory backend with a `MemoryFallbackWarning`.
    """
    choice = choose_backend(name)
    if choice.fallback:
        warnings.warn(
            "no message-queue provider is installed, so abe uses the in-process memory "
            "backend: messages stay in this process and are lost when it exits. For a real "
            f"broker, e.g. pip install abe-mq-redis and set {BACKEND_VARIABLE}=redis",
            MemoryFallbackWarning,
            stacklevel=2,
        )
    backend = choice.entry.load_class().from_env()
    if isinstance(backend, BaseBackend):
        return backend
    return ProtocolBackend(backend)  # only the protocol's methods: at most once, said once


def _entry_named(entries: Sequence[BackendEntry], name: str) -> BackendEntry:
    wanted = name.strip().lower()
    matches = [entry for entry in entries if entry.name == wanted]
    if len(matches) > 1:
        origins = " and ".join(entry.origin for entry in matches)
        raise BackendNotFoundError(
            f"the backend name {wanted!r} is registered by more than one distribution "
            f"({origins}); uninstall all but one of them"
        )
    if not matches:
        installed = ", ".join(f"{entry.name} ({entry.origin})" for entry in entries)
        close = difflib.get_close_matches(wanted, [entry.name for entry in entries], n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise BackendNotFoundError(
            f"no message-queue backend named {wanted!r} is installed. {hint}Installed: "
            f"{installed}. To add it: pip install abe-mq-{wanted}"
        )
    return matches[0]


def _entry(point: EntryPoint) -> BackendEntry:
    dist = getattr(point, "dist", None)
    name = None if dist is None else dist.metadata["Name"]
    version = None if dist is None else dist.version
    return BackendEntry(point.name.strip().lower(), point.value, name, version)


def __getattr__(name: str) -> object:
    """`BACKEND_ENTRY_POINT_GROUP`, the old name of ENTRY_POINT_GROUP, with a warning."""
    if name == "BACKEND_ENTRY_POINT_GROUP":
        return moved(__name__, name, __name__, "ENTRY_POINT_GROUP")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
