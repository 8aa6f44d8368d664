"""The library this instrumentation instruments, as `BaseInstrumentor` checks it."""

from __future__ import annotations

from collections.abc import Collection

_instruments: Collection[str] = ("abe-core >= 0.1, < 0.2",)
