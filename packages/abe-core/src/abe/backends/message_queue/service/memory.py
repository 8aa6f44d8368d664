"""Deprecated path: `abe.backends.message_queue.memory` is the memory backend's home."""

from __future__ import annotations

from typing import Any

from abe._deprecation import moved

__all__: list[str] = []


def __getattr__(name: str) -> Any:
    return moved(__name__, name, "abe.backends.message_queue.memory", name)
