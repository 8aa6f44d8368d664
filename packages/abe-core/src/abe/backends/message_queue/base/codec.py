"""The wire format every backend shares: body = the payload's JSON, metadata = headers.

Checks run before any network I/O, so a refused payload never leaves the process.
Foreign producers that write plain JSON bodies, with no headers, are read as well.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from abe.errors import PayloadError
from abe.types import MessageQueuePayload

__all__ = [
    "HEADER_ATTEMPTS",
    "HEADER_ERROR",
    "HEADER_ID",
    "HEADER_ORIGINAL_KEY",
    "HEADER_PREFIX",
    "HEADER_PUBLISHED_AT",
    "IncomingMessage",
    "OutgoingMessage",
    "decode_body",
    "encode_payload",
    "new_message_id",
    "wrap_undecodable",
]

HEADER_PREFIX = "abe-"
"""Headers whose names start with this are abe's own; user headers may not use it."""
HEADER_ID = "abe-id"
HEADER_PUBLISHED_AT = "abe-published-at"
"""Milliseconds since the Unix epoch, as decimal text."""
HEADER_ERROR = "abe-error"
HEADER_ATTEMPTS = "abe-attempts"
HEADER_ORIGINAL_KEY = "abe-original-key"

_PROCESS_PREFIX = os.urandom(8).hex()
_SEQUENCE = count(1)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def new_message_id() -> str:
    """A message id unique across processes: 64 random bits for this process, then a counter."""
    return f"{_PROCESS_PREFIX}-{next(_SEQUENCE):x}"


@dataclass(slots=True)
class OutgoingMessage:
    """One message on its way to the broker: the JSON body and every header to send with it."""

    id: str
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class IncomingMessage:
    """One message as a provider read it from the broker, before abe decodes it.

    `attempt` is 1 on the first delivery; `handle` is whatever the provider needs to
    acknowledge it later (an offset, a receipt handle, a stream entry id).
    """

    key: str
    body: bytes
    headers: Mapping[str, str]
    attempt: int
    broker_id: str
    handle: Any = None
    received_at: float = field(default_factory=time.monotonic)


def encode_payload(payload: object, max_bytes: int) -> bytes:
    """The payload's JSON as UTF-8, or PayloadError saying what to change."""
    try:
        if type(payload) is not dict:
            if not isinstance(payload, dict):
                raise PayloadError(
                    f"payload must be a dict, got {type(payload).__name__}; "
                    f"wrap it, e.g. {{'value': ...}}"
                )
            _check_json(payload, "payload", set())
        elif not _is_plain_json(payload):
            _check_json(payload, "payload", set())
        body = _ENCODER.encode(payload).encode()
    except RecursionError:
        raise PayloadError(
            "payload is nested too deeply to encode; flatten it or send a reference instead"
        ) from None
    except ValueError as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from None
    if len(body) > max_bytes:
        raise PayloadError(
            f"payload is {len(body):,} bytes as JSON, over this backend's limit of "
            f"{max_bytes:,}; store large data elsewhere and send a reference to it"
        )
    return body


def wrap_undecodable(body: bytes) -> bytes:
    """A JSON object holding a body that was not one, for its dead letter."""
    try:
        wrapped = {"undecodable_body": body.decode()}
    except UnicodeDecodeError:
        wrapped = {"undecodable_body_base64": base64.b64encode(body).decode()}
    return _ENCODER.encode(wrapped).encode()


def decode_body(body: bytes) -> MessageQueuePayload:
    """The payload in a body, or ValueError when the body is not a JSON object."""
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError(f"the body is JSON but a {type(value).__name__}, not an object")
    return value


_LEAVES = frozenset({str, int, bool, type(None)})


def _is_plain_json(payload: dict[Any, Any]) -> bool:
    """Fast check: only str keys, and values of the exact JSON types, finite floats included."""
    stack: list[Any] = [payload]
    seen = {id(payload)}
    leaves = _LEAVES
    while stack:
        container = stack.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return False
            values = container.values()
        else:
            values = container
        for value in values:
            kind = type(value)
            if kind in leaves:
                continue
            if kind is float:
                if value - value != 0.0:  # inf - inf and nan - nan are nan
                    return False
            elif kind is dict or kind is list:
                if id(value) in seen:  # shared or cyclic: let the thorough check decide
                    return False
                seen.add(id(value))
                stack.append(value)
            else:
                return False
    return True


def _check_json(value: Any, path: str, active: set[int]) -> None:
    """Slow, thorough check: refuse what would not decode equal, naming where it is.

    Subclasses of the JSON types (an IntEnum, a str Enum, an OrderedDict) are accepted,
    since they encode to, and compare equal with, what comes back. `active` holds the
    containers on the current path, to refuse one that contains itself.
    """
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadError(
                f"{path} is {value!r}, which JSON cannot represent; send null or a string instead"
            )
        return
    if isinstance(value, (str, int)):
        return
    if isinstance(value, (dict, list)):
        if id(value) in active:
            raise PayloadError(f"{path} contains itself, which JSON cannot represent")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise PayloadError(
                            f"{path} has the key {key!r} ({type(key).__name__}); JSON object "
                            f"keys are strings, so it would come back as {str(key)!r}. "
                            f"Use a string key"
                        )
                    _check_json(item, f"{path}[{key!r}]", active)
            else:
                for index, item in enumerate(value):
                    _check_json(item, f"{path}[{index}]", active)
        finally:
            active.discard(id(value))
        return
    if isinstance(value, tuple):
        raise PayloadError(
            f"{path} is a tuple; JSON would turn it into a list, so it would not come back "
            f"equal. Use a list"
        )
    raise PayloadError(
        f"{path} is a {type(value).__name__}, which is not JSON-serialisable; convert it to a "
        f"str, number, bool, None, list or dict first"
    )
