"""What abe writes to SQS and reads back: queue names, message attributes and sizes.

The body of every message is the payload's JSON text and nothing else. abe's message id
and publish time are SQS's own `MessageId` and `SentTimestamp`, so a published message
carries no attribute of abe's; a forwarded one (a dead letter) keeps its original's as
`abe-id` and `abe-published-at`. Other headers travel as String message attributes of
the same name; when SQS cannot carry them that way (more than its 10 attributes, a name
or value it refuses) the user headers travel together as one JSON object in the
attribute `abe-headers` (core's HEADER_PACKED).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from abe.errors import InvalidKeyError, PayloadError
from abe.provider import (
    DEAD_LETTER_SUFFIX,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_ORIGINAL_KEY,
    HEADER_PACKED,
    HEADER_PREFIX,
    HEADER_PUBLISHED_AT,
    IncomingMessage,
    KeyRules,
    OutgoingMessage,
)

__all__ = [
    "ATTRIBUTE_RESERVE",
    "BATCH_ENTRIES",
    "QUEUE_NAME_LIMIT",
    "SQS_MESSAGE_LIMIT",
    "Entry",
    "SqsKeyRules",
    "decode_attributes",
    "encode_attributes",
    "entry",
    "incoming",
    "is_fifo",
    "queue_name",
    "split_batches",
    "wire_headers",
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

FIFO_SUFFIX = ".fifo"
_FIFO_KEY = re.compile(r"[A-Za-z0-9_-]+\.fifo(?:-dlq)*")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_-])?")
_REFUSED_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters SQS refuses in a body or attribute value (XML 1.0's character set)."""
_GENERATED = frozenset({HEADER_ID, HEADER_PUBLISHED_AT})
"""Headers abe makes itself from hex digits and numbers: always valid attributes."""


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


def _native(name: str, value: str) -> bool:
    """Whether a header can travel as its own String attribute."""
    if name in _GENERATED:
        return True
    if not value or _ATTRIBUTE_NAME.fullmatch(name) is None or ".." in name:
        return False
    return not name.lower().startswith(("aws.", "amazon.")) and not _REFUSED_TEXT.search(value)


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def encode_attributes(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The message attributes carrying `headers` (see the module docstring for the layout)."""
    if len(headers) <= MAX_ATTRIBUTES and all(_native(n, v) for n, v in headers.items()):
        return {name: _string(value) for name, value in headers.items()}
    attributes: dict[str, dict[str, str]] = {}
    packed: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(HEADER_PREFIX) and _native(name, value):
            attributes[name] = _string(value)
        else:
            packed[name] = value
    text = json.dumps(packed, ensure_ascii=False, separators=(",", ":"))
    if _REFUSED_TEXT.search(text) is not None:  # U+FFFE / U+FFFF: escape everything
        text = json.dumps(packed, separators=(",", ":"))
    attributes[HEADER_PACKED] = _string(text)
    return attributes


def wire_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers a message must carry as attributes.

    A message being published carries neither `abe-id` nor `abe-published-at`: SQS's
    `MessageId` and `SentTimestamp` stand for them on reading. A forwarded one (a dead
    letter, which names its original key) keeps both: they are its original's.
    """
    if HEADER_ORIGINAL_KEY in headers or HEADER_ID not in headers:
        return headers
    return {name: value for name, value in headers.items() if name not in _GENERATED}


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """What the attributes add to a message's size as SQS counts it: name, type and value bytes."""
    return sum(
        len(name.encode()) + len(item["DataType"].encode()) + len(item["StringValue"].encode())
        for name, item in attributes.items()
    )


def decode_attributes(attributes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """Headers from received message attributes, whoever wrote them.

    String and Number attributes give their text, Binary ones their bytes in base64;
    `abe-headers` is unpacked (a value that is not a JSON object of strings stays as it is).
    """
    headers: dict[str, str] = {}
    for name, attribute in (attributes or {}).items():
        if "StringValue" in attribute:
            headers[name] = str(attribute["StringValue"])
        elif "BinaryValue" in attribute:
            headers[name] = base64.b64encode(bytes(attribute["BinaryValue"])).decode()
    packed = headers.pop(HEADER_PACKED, None)
    if packed is not None:
        try:
            unpacked = json.loads(packed)
        except ValueError:
            unpacked = None
        if isinstance(unpacked, dict) and all(isinstance(v, str) for v in unpacked.values()):
            headers.update({k: v for k, v in unpacked.items() if k not in headers})
        else:
            headers[HEADER_PACKED] = packed
    return headers


def incoming(key: str, message: Mapping[str, Any]) -> IncomingMessage:
    """A received SQS message for core: its attributes as headers, then abe's id and publish
    time from `MessageId` and `SentTimestamp` unless it carries its own (a dead letter does);
    the attempt is SQS's `ApproximateReceiveCount`."""
    headers = decode_attributes(message.get("MessageAttributes"))
    system = message.get("Attributes") or {}
    if HEADER_ID not in headers and message.get("MessageId"):
        headers[HEADER_ID] = str(message["MessageId"])
    if HEADER_PUBLISHED_AT not in headers and system.get("SentTimestamp"):
        headers[HEADER_PUBLISHED_AT] = str(system["SentTimestamp"])
    try:
        attempt = max(1, int(system.get("ApproximateReceiveCount", 1)))
    except (TypeError, ValueError):
        attempt = 1
    body = str(message.get("Body", "")).encode()
    broker_id = str(message.get("MessageId", ""))
    return IncomingMessage(key, body, headers, attempt, broker_id, message.get("ReceiptHandle"))


@dataclass(frozen=True, slots=True)
class Entry:
    """One message ready for SendMessage(Batch): its index in the batch, parameters and size."""

    index: int
    params: dict[str, Any]
    size: int


def entry(key: str, index: int, message: OutgoingMessage, limit: int) -> Entry:
    """SendMessage parameters for one message, or PayloadError if it is over `limit` bytes.

    The body is the payload's JSON, with U+FFFE and U+FFFF (which SQS refuses) written as
    JSON escapes; a dead letter's note is shortened to fit rather than refused.
    """
    text = message.body.decode()
    if "\ufffe" in text or "\uffff" in text:
        text = text.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
    body_size = len(text.encode())
    headers = dict(wire_headers(message.headers))
    attributes = encode_attributes(headers) if headers else {}
    size = body_size + attributes_size(attributes)
    if size > limit and HEADER_ERROR in headers:  # a dead letter: shorten its note
        room = len(headers[HEADER_ERROR].encode()) - (size - limit)
        note = headers[HEADER_ERROR].encode()[: max(room, 0)].decode(errors="ignore")
        headers[HEADER_ERROR] = note or "(see logs)"
        attributes = encode_attributes(headers)
        size = body_size + attributes_size(attributes)
    if size > limit:
        where = "" if index == 0 else f"payloads[{index}]: "
        raise PayloadError(
            f"{where}the message to {key!r} is {size:,} bytes with its headers (SQS counts "
            f"attribute names and values), over the {limit:,} this backend sends (SQS's "
            f"limit is 1 MiB per message); nothing was published"
        )
    params: dict[str, Any] = {"MessageBody": text}
    if attributes:
        params["MessageAttributes"] = attributes
    if is_fifo(key):
        params["MessageGroupId"] = key
        params["MessageDeduplicationId"] = message.id
    return Entry(index, params, size)


def split_batches(
    entries: Sequence[Entry],
    *,
    max_entries: int = BATCH_ENTRIES,
    max_bytes: int = SQS_MESSAGE_LIMIT,
) -> list[list[Entry]]:
    """Consecutive runs of entries, each within SendMessageBatch's count and total-size limits."""
    batches: list[list[Entry]] = []
    size = 0
    for item in entries:
        if not batches or len(batches[-1]) >= max_entries or size + item.size > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.size
    return batches
