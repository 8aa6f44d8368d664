"""The wire format every backend shares: body = the payload's JSON, metadata = headers.

Checks run before any network I/O, so a refused payload never leaves the process.
Foreign producers that write plain JSON bodies, with no headers, are read as well.
"""

from __future__ import annotations

import base64
import hashlib
import json
import json.encoder
import json.scanner
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from abe.backends.message_queue.base.headers import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_ORIGINAL_KEY,
    HEADER_PREFIX,
    HEADER_PUBLISHED_AT,
)
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
    "UndecodableBody",
    "check_message_id",
    "decode_body",
    "encode_payload",
    "new_message_id",
    "wrap_undecodable",
]

_PROCESS_PREFIX = os.urandom(8).hex()
_SEQUENCE = count(1)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _checked_encoder(escape: Callable[[str], str]) -> Callable[[object], str]:
    """`_ENCODER.encode` for payloads already checked, without its per-call set-up, writing
    strings with `escape`.

    `JSONEncoder.encode` builds json's C encoder anew on every call, with a dict of the
    containers on the path to refuse a cycle. `encode_payload` has refused cycles before
    it encodes (`_plain_json`, `_check_json`), so one C encoder, made once and without
    that dict, writes the same text for about a third less. Where json has no C encoder
    (not CPython), `_ENCODER.encode` it is.
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return _ENCODER.encode
    chunks = make(None, _ENCODER.default, escape, None, ":", ",", False, False, False)

    def encode(payload: object) -> str:
        return "".join(chunks(payload, 0))

    return encode


_encode_checked = _checked_encoder(json.encoder.encode_basestring)
_encode_ascii = _checked_encoder(json.encoder.encode_basestring_ascii)
"""For a payload whose strings are all ASCII: the same text (but for a DEL character, written
as its escape), and json's ASCII escaper is faster: 115 against 143 us for a 64 KiB string."""


_ID_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))


def check_message_id(message_id: object) -> str:
    """`message_id` if every broker can carry it as a message id, else PayloadError.

    1 to 128 printable ASCII characters without spaces (what SQS takes as a
    deduplication id; NATS, Kafka and Redis carry it in a header).
    """
    if not isinstance(message_id, str):
        raise PayloadError(f"a message id must be a str, got {type(message_id).__name__}")
    if not 0 < len(message_id) <= 128 or not _ID_CHARACTERS.issuperset(message_id):
        raise PayloadError(
            f"message id {message_id[:40]!r} must be 1 to 128 printable ASCII characters "
            f"without spaces (letters, digits, punctuation), so that every broker can carry it"
        )
    return message_id


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
        kind = _plain_json(payload) if type(payload) is dict else _NOT_PLAIN
        if kind is _NOT_PLAIN:
            if not isinstance(payload, dict):
                raise PayloadError(
                    f"payload must be a dict, got {type(payload).__name__}; "
                    f"wrap it, e.g. {{'value': ...}}"
                )
            _check_json(payload, "payload", set())
        body = (_encode_ascii if kind is _PLAIN_ASCII else _encode_checked)(payload).encode()
    except RecursionError:
        raise PayloadError(
            "payload is nested too deeply to encode; flatten it or send a reference instead"
        ) from None
    except ValueError as exc:
        if isinstance(exc, PayloadError):
            raise
        _check_json(payload, "payload", set())  # names what the encoder refused (a nan, say)
        raise PayloadError(f"payload cannot be encoded as JSON: {exc}") from None
    if len(body) > max_bytes:
        raise PayloadError(
            f"payload is {len(body):,} bytes as JSON, over this backend's limit of "
            f"{max_bytes:,}; store large data elsewhere and send a reference to it"
        )
    return body


def wrap_undecodable(body: bytes, max_bytes: int | None = None) -> bytes:
    """A JSON object holding a body that was not one, for its dead letter.

    UTF-8 text is kept as `undecodable_body`, other bytes as `undecodable_body_base64`.
    When that would be over `max_bytes`, only a summary travels
    (`undecodable_body_omitted`: its size and SHA-256), since the dead-letter key could
    not take it; the original stays where it was read from until the broker drops it.
    """
    try:
        wrapped: dict[str, Any] = {"undecodable_body": body.decode()}
    except UnicodeDecodeError:
        wrapped = {"undecodable_body_base64": base64.b64encode(body).decode()}
    encoded = _ENCODER.encode(wrapped).encode()
    if max_bytes is not None and len(encoded) > max_bytes:
        summary = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        encoded = _ENCODER.encode({"undecodable_body_omitted": summary}).encode()
    return encoded


class UndecodableBody(ValueError):
    """A body that cannot become a payload; the message says what is wrong with it."""


def _refuse_constant(name: str) -> Any:
    raise UndecodableBody(f"the body is not strict JSON: it contains {name}, which JSON has not")


if sys.version_info >= (3, 11):
    _parse_int = None
else:  # 3.10 has no limit on the digits of an int: a long one costs quadratic time to read

    def _parse_int(text: str) -> int:
        if len(text) > 4300:
            raise UndecodableBody(f"the body holds an integer of {len(text):,} digits")
        return int(text)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_parse_int)
# What `_DECODER.decode` runs, without its two whitespace regexes. (typeshed types the
# argument as a scanner; CPython takes the decoder, as JSONDecoder.__init__ itself does.)
_SCAN = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]


def decode_body(body: bytes, max_bytes: int | None = None) -> MessageQueuePayload:
    """The payload in a body, or `UndecodableBody` (a ValueError) saying what is wrong.

    Strict where a foreign producer could surprise a consumer: the body must be UTF-8
    (never guessed as another encoding), strict JSON (no NaN or Infinity), an object,
    at most `max_bytes` long, and not nested beyond what Python can read. Whatever the
    body, nothing but `UndecodableBody` comes out of here.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise UndecodableBody(
            f"the body is {len(body):,} bytes, over this backend's limit of {max_bytes:,}"
        )
    if not body:
        raise UndecodableBody("the body is empty")
    try:
        text = body.decode("utf-8")
        try:  # what `decode` runs, without the two whitespace regexes around it
            value, end = _SCAN(text, 0)
        except StopIteration:  # no value where one must be: `decode` says where
            end = -1
        if end != len(text):  # whitespace or more around the value: `decode` reads it
            value = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise UndecodableBody(
            f"the body is not UTF-8 text (byte {body[exc.start]:#04x} at position {exc.start})"
        ) from None
    except UndecodableBody:
        raise
    except RecursionError:
        raise UndecodableBody("the body is JSON nested too deeply to read") from None
    except ValueError as exc:  # json.JSONDecodeError, or an int over Python's digit limit
        bom = " (it starts with a byte-order mark)" if text.startswith("\ufeff") else ""
        raise UndecodableBody(f"the body is not JSON{bom}: {_first_line(exc)}") from None
    if not isinstance(value, dict):
        raise UndecodableBody(f"the body is JSON but {_json_kind(value)}, not an object")
    return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _json_kind(value: object) -> str:
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


_KEYS = frozenset({str})
_LEAVES = frozenset({str, int, bool, float, type(None)})
"""The exact types of a plain payload's leaves. A float may still be nan or infinite: the
encoder refuses those (allow_nan=False), and `encode_payload` then says where they are."""


_NOT_PLAIN, _PLAIN, _PLAIN_ASCII = "not plain", "plain", "plain ascii"
"""What `_plain_json` found: `_check_json` must look; plain; plain with ASCII strings only."""


def _plain_json(payload: dict[Any, Any]) -> str:
    """Fast check: only str keys, and values of the exact JSON types (see `_LEAVES`); and
    whether every string in it, keys too, is ASCII (`str.isascii` reads a flag)."""
    if _KEYS.issuperset(map(type, payload)) and _LEAVES.issuperset(map(type, payload.values())):
        # flat, as most payloads are: its types checked without a loop in Python
        for key, value in payload.items():
            if not key.isascii() or (type(value) is str and not value.isascii()):
                return _PLAIN
        return _PLAIN_ASCII
    return _walk_plain_json(payload)


def _walk_plain_json(payload: dict[Any, Any]) -> str:
    """`_plain_json` for a payload with containers in it: each container once."""
    stack: list[Any] = [payload]
    seen = {id(payload)}
    leaves, all_ascii = _LEAVES, True
    while stack:
        container = stack.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return _NOT_PLAIN
            all_ascii = all_ascii and all(map(str.isascii, container))
            values = container.values()
        else:
            values = container
        for value in values:
            kind = type(value)
            if kind in leaves:
                if kind is str and all_ascii:
                    all_ascii = value.isascii()
                continue
            if kind is dict or kind is list:
                if id(value) in seen:  # shared or cyclic: let the thorough check decide
                    return _NOT_PLAIN
                seen.add(id(value))
                stack.append(value)
            else:
                return _NOT_PLAIN
    return _PLAIN_ASCII if all_ascii else _PLAIN


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
            for where, item in _items(value, path):
                _check_json(item, where, active)
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


def _items(value: dict[Any, Any] | list[Any], path: str) -> Iterator[tuple[str, Any]]:
    """A container's items with the path of each; a key that is not a string is refused."""
    if isinstance(value, list):
        yield from ((f"{path}[{index}]", item) for index, item in enumerate(value))
        return
    for key, item in value.items():
        if not isinstance(key, str):
            raise PayloadError(
                f"{path} has the key {key!r} ({type(key).__name__}); JSON object "
                f"keys are strings, so it would come back as {str(key)!r}. "
                f"Use a string key"
            )
        yield f"{path}[{key!r}]", item
