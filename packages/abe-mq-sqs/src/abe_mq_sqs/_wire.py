"""What abe writes to SQS and reads back: queue names, message attributes and sizes.

The body of every message is the payload's JSON text and nothing else. abe's message id
and publish time are SQS's own `MessageId` and `SentTimestamp`, so a published message
carries no attribute of abe's; a forwarded one (a dead letter) keeps its original's as
`abe-id` and `abe-published-at`. Other headers travel as String message attributes of
the same name; when SQS cannot carry them that way (more than its 10 attributes, a name
or value it refuses) the user headers travel together as one JSON object in the
attribute `abe-headers`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from abe.backends.message_queue.base.codec import (
    HEADER_ID,
    HEADER_ORIGINAL_KEY,
    HEADER_PREFIX,
    HEADER_PUBLISHED_AT,
)
from abe.backends.message_queue.base.keys import DEAD_LETTER_SUFFIX, KeyRules
from abe.errors import InvalidKeyError

__all__ = [
    "ATTRIBUTE_RESERVE",
    "BATCH_ENTRIES",
    "Entry",
    "MAX_ATTRIBUTES",
    "PACKED_HEADERS",
    "QUEUE_NAME_LIMIT",
    "SQS_MESSAGE_LIMIT",
    "SqsKeyRules",
    "attributes_size",
    "body_text",
    "decode_attributes",
    "encode_attributes",
    "headers_of",
    "wire_headers",
    "is_fifo",
    "queue_name",
    "split_batches",
]

QUEUE_NAME_LIMIT = 80
"""SQS queue names are 1 to 80 characters, the `.fifo` suffix included."""
SQS_MESSAGE_LIMIT = 1_048_576
"""SQS's largest message (body plus attributes) and largest SendMessageBatch request: 1 MiB."""
ATTRIBUTE_RESERVE = 1_024
"""Bytes of the message limit kept for abe's attributes (id, publish time, dead-letter notes)."""
BATCH_ENTRIES = 10
"""SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries."""
MAX_ATTRIBUTES = 10
"""SQS carries at most 10 message attributes per message."""
PACKED_HEADERS = "abe-headers"
"""The attribute holding user headers as a JSON object when they cannot travel one by one."""

FIFO_SUFFIX = ".fifo"
_FIFO_KEY = re.compile(r"[A-Za-z0-9_-]+\.fifo(?:-dlq)*")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_-])?")
_REFUSED_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters SQS refuses in a body or attribute value (XML 1.0's character set)."""
_GENERATED = frozenset({HEADER_ID, HEADER_PUBLISHED_AT})
"""Headers abe makes itself from hex digits and numbers: always valid attributes."""
_STRING = "String"


class SqsKeyRules(KeyRules):
    """SQS queue names: letters, digits, '_' and '-', with '.fifo' only as a FIFO queue's suffix.

    A FIFO key `orders.fifo` has the dead-letter key `orders.fifo-dlq` (core appends
    `-dlq`), which names the FIFO queue `orders-dlq.fifo`; that key is accepted too (and
    `orders.fifo-dlq-dlq`, the dead letters of a dead-letter reader, and so on).
    """

    def check(self, key: object) -> str:
        checked = super().check(key)
        if "." in checked and _FIFO_KEY.fullmatch(checked) is None:
            raise InvalidKeyError(
                f"key {checked!r} contains '.'; SQS queue names may only contain letters, "
                f"digits, '_' and '-', and end in '.fifo' for a FIFO queue (e.g. 'orders.fifo')"
            )
        return checked


def queue_name(key: str, prefix: str = "") -> str:
    """The SQS queue name of `key`: `orders.fifo-dlq` becomes `orders-dlq.fifo`, others stay."""
    base, fifo, dead_letters = key.partition(FIFO_SUFFIX)
    if fifo and dead_letters:
        key = base + dead_letters + FIFO_SUFFIX
    return prefix + key


def is_fifo(key: str) -> bool:
    """Whether `key` names a FIFO queue (ordered per key, deduplicated by abe's message id)."""
    _, fifo, dead_letters = key.partition(FIFO_SUFFIX)
    return bool(fifo) and dead_letters.replace(DEAD_LETTER_SUFFIX, "") == ""


def body_text(body: bytes) -> tuple[str, int]:
    """The body as the text SQS carries, and its size in bytes.

    U+FFFE and U+FFFF, which SQS refuses, are JSON-escaped: they can only occur inside
    JSON strings, where the escape means the same character, so the body is still the
    payload's JSON.
    """
    text = body.decode()
    if "\ufffe" in text or "\uffff" in text:
        text = text.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
        return text, len(text.encode())
    return text, len(body)


def _native(name: str, value: str) -> bool:
    """Whether a header can travel as its own String attribute."""
    if name in _GENERATED:
        return True
    if not value or _ATTRIBUTE_NAME.fullmatch(name) is None or ".." in name:
        return False
    lowered = name.lower()
    if lowered.startswith(("aws.", "amazon.")):
        return False
    return _REFUSED_TEXT.search(value) is None


def encode_attributes(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The message attributes carrying `headers` (see the module docstring for the layout)."""
    if len(headers) <= MAX_ATTRIBUTES and all(_native(n, v) for n, v in headers.items()):
        return {
            name: {"DataType": _STRING, "StringValue": value} for name, value in headers.items()
        }
    attributes: dict[str, dict[str, str]] = {}
    packed: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(HEADER_PREFIX) and _native(name, value):
            attributes[name] = {"DataType": _STRING, "StringValue": value}
        else:
            packed[name] = value
    text = json.dumps(packed, ensure_ascii=False, separators=(",", ":"))
    if _REFUSED_TEXT.search(text) is not None:  # U+FFFE / U+FFFF: escape everything
        text = json.dumps(packed, separators=(",", ":"))
    attributes[PACKED_HEADERS] = {"DataType": _STRING, "StringValue": text}
    return attributes


def wire_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers a message must carry as attributes.

    A message being published carries neither `abe-id` nor `abe-published-at`: SQS gives
    every message a `MessageId` and a `SentTimestamp`, which stand for them on reading.
    A forwarded one (a dead letter, which names its original key) keeps both: they are
    its original's, not its own.
    """
    if HEADER_ORIGINAL_KEY in headers or HEADER_ID not in headers:
        return headers
    if len(headers) == 2 and HEADER_PUBLISHED_AT in headers:
        return {}
    return {name: value for name, value in headers.items() if name not in _GENERATED}


def headers_of(message: Mapping[str, Any]) -> dict[str, str]:
    """The headers of a received SQS message: its attributes, then abe's id and publish time
    from `MessageId` and `SentTimestamp` unless it carries its own (a dead letter does)."""
    headers = decode_attributes(message.get("MessageAttributes"))
    if HEADER_ID not in headers and message.get("MessageId"):
        headers[HEADER_ID] = str(message["MessageId"])
    if HEADER_PUBLISHED_AT not in headers:
        sent = (message.get("Attributes") or {}).get("SentTimestamp")
        if sent:
            headers[HEADER_PUBLISHED_AT] = str(sent)
    return headers


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """What the attributes add to a message's size as SQS counts it: name, type and value bytes."""
    size = 0
    for name, attribute in attributes.items():
        size += len(name.encode()) + len(attribute["DataType"].encode())
        size += len(attribute.get("StringValue", "").encode())
    return size


def decode_attributes(attributes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """Headers from received message attributes, whoever wrote them.

    String and Number attributes give their text, Binary ones their bytes in base64;
    `abe-headers` is unpacked (a value that is not a JSON object of strings stays as it is).
    """
    headers: dict[str, str] = {}
    if not attributes:
        return headers
    packed: str | None = None
    for name, attribute in attributes.items():
        if "StringValue" in attribute:
            value = str(attribute["StringValue"])
        elif "BinaryValue" in attribute:
            value = base64.b64encode(bytes(attribute["BinaryValue"])).decode()
        else:
            continue
        if name == PACKED_HEADERS:
            packed = value
        else:
            headers[name] = value
    if packed is not None:
        try:
            unpacked = json.loads(packed)
        except ValueError:
            unpacked = None
        if isinstance(unpacked, dict) and all(isinstance(v, str) for v in unpacked.values()):
            for name, value in unpacked.items():
                headers.setdefault(name, value)
        else:
            headers[PACKED_HEADERS] = packed
    return headers


@dataclass(frozen=True, slots=True)
class Entry:
    """One message ready for SendMessage(Batch): its index in the batch, parameters and size."""

    index: int
    params: dict[str, Any]
    size: int


def split_batches(
    entries: Sequence[Entry],
    *,
    max_entries: int = BATCH_ENTRIES,
    max_bytes: int = SQS_MESSAGE_LIMIT,
) -> list[list[Entry]]:
    """Consecutive runs of entries, each within SendMessageBatch's count and total-size limits."""
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        if current and (len(current) >= max_entries or size + entry.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        batches.append(current)
    return batches
