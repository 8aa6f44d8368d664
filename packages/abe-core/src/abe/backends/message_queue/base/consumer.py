"""Deprecated path: the consumer lives in `abe.backends.message_queue.consumer`."""

from __future__ import annotations

from typing import Any

from abe._deprecation import moved

__all__: list[str] = []

_NEW = {
    "MessageQueueConsumerProtocol": "ConsumerProtocol",
    "MessageQueueConsumer": "ConsumerProtocol",
    "ConsumerProtocol": "ConsumerProtocol",
    "AsyncLoopConsumer": "AsyncLoopConsumer",
    "Handler": "Handler",
}


def __getattr__(name: str) -> Any:
    if name not in _NEW:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return moved(__name__, name, "abe.backends.message_queue.consumer", _NEW[name])
