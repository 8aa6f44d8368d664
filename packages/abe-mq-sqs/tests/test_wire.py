"""The wire format: queue names, key rules, attributes, body text, sizes and batch splitting."""

from __future__ import annotations

import json

import pytest

from abe.errors import InvalidKeyError
from abe.provider import HEADER_PACKED as PACKED_HEADERS
from abe.provider import OutgoingMessage
from abe_mq_sqs import SqsBackend, SqsSettings
from abe_mq_sqs._client import (
    Entry,
    decode_attributes,
    encode_attributes,
    entry,
    incoming,
    is_fifo,
    queue_name,
    split_batches,
)


def check(key: str) -> str:
    """The backend's key check (core's rules and SQS's), made before any I/O."""
    backend = SqsBackend(SqsSettings(region="us-east-1"))
    try:
        return backend._check_key(key)
    finally:
        backend.secret_filter.uninstall()


@pytest.mark.parametrize(
    "key",
    [
        "orders",
        "a",
        "Orders_2024-eu",
        "orders.fifo",
        "orders.fifo-dlq",
        "orders-dlq.fifo",
        "x" * 76,
    ],
)
def test_keys_sqs_accepts(key: str) -> None:
    assert check(key) == key


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "empty"),
        ("x" * 77, "at most 76"),
        ("has space", "contains ' '"),
        ("a.b", "'.fifo'"),
        ("orders.FIFO", "'.fifo'"),
        ("orders.fifo.fifo", "'.fifo'"),
        (".fifo", "'.fifo'"),
        ("orders.fifo-dlx", "'.fifo'"),
        ("ünï", "contains"),
        ("a/b", "contains"),
    ],
)
def test_keys_sqs_refuses(key: str, rule: str) -> None:
    with pytest.raises(InvalidKeyError, match=rule):
        check(key)


def test_queue_names() -> None:
    assert queue_name("orders") == "orders"
    assert queue_name("orders-dlq") == "orders-dlq"
    assert queue_name("orders.fifo") == "orders.fifo"
    assert queue_name("orders.fifo-dlq") == "orders-dlq.fifo"
    assert queue_name("orders.fifo", "prod-") == "prod-orders.fifo"
    assert queue_name("orders.fifo-dlq", "prod-") == "prod-orders-dlq.fifo"
    assert queue_name("orders.fifo-dlq-dlq") == "orders-dlq-dlq.fifo"
    keys = ("a", "a.fifo", "a.fifo-dlq", "a-dlq", "a.fifo-dlq-dlq", "a.fifox")
    assert [is_fifo(k) for k in keys] == [False, True, True, False, True, False]


def test_every_valid_key_has_a_valid_dead_letter_queue() -> None:
    for key in ("x" * 76, "x" * 71 + ".fifo"):
        check(key)
        dead = queue_name(key + "-dlq")
        assert len(dead) <= 80
        assert dead.endswith(".fifo") == key.endswith(".fifo")


def test_headers_travel_as_string_attributes() -> None:
    headers = {"abe-id": "abc-1", "abe-published-at": "1700000000000", "trace-id": "t-1"}
    attributes = encode_attributes(headers)
    assert attributes == {
        name: {"DataType": "String", "StringValue": value} for name, value in headers.items()
    }
    assert decode_attributes(attributes) == headers


@pytest.mark.parametrize(
    "headers",
    [
        {f"h{n}": str(n) for n in range(11)},  # more than SQS's 10 attributes
        {"empty": ""},  # SQS refuses empty values
        {"has space": "x"},  # and names outside A-Za-z0-9_.-
        {"AWS.reserved": "x"},
        {"Amazon.reserved": "x"},
        {".dot": "x"},
        {"a..b": "x"},
        {"control": "\x00"},
        {"nonchar": "\uffff"},
        {"x" * 257: "long name"},
    ],
)
def test_headers_sqs_cannot_carry_travel_packed(headers: dict[str, str]) -> None:
    wire = {"abe-id": "abc-1", "abe-published-at": "1", **headers}
    attributes = encode_attributes(wire)
    assert set(attributes) == {"abe-id", "abe-published-at", PACKED_HEADERS}
    packed = attributes[PACKED_HEADERS]["StringValue"]
    assert "\uffff" not in packed
    assert "\x00" not in packed
    assert json.loads(packed) == headers
    assert decode_attributes(attributes) == wire


def test_foreign_attributes_are_read() -> None:
    headers = decode_attributes(
        {
            "trace": {"DataType": "String", "StringValue": "t"},
            "count": {"DataType": "Number", "StringValue": "3"},
            "tag": {"DataType": "String.custom", "StringValue": "v"},
            "raw": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
            PACKED_HEADERS: {"DataType": "String", "StringValue": "not json"},
        }
    )
    assert headers == {
        "trace": "t",
        "count": "3",
        "tag": "v",
        "raw": "AQI=",
        PACKED_HEADERS: "not json",
    }
    assert decode_attributes(None) == {}


def _entry(body: bytes) -> tuple[str, int]:
    made = entry("k", 0, OutgoingMessage("i", body, {}), 1_048_576)
    return made.params["MessageBody"], made.size


def test_body_text_escapes_what_sqs_refuses() -> None:
    body = json.dumps({"x": "a\uffffb\ufffe"}, ensure_ascii=False).encode()
    text, size = _entry(body)
    assert "\uffff" not in text
    assert "\ufffe" not in text
    assert json.loads(text) == {"x": "a\uffffb\ufffe"}
    assert size == len(text.encode())
    plain = '{"x":"é"}'.encode()
    assert _entry(plain) == ('{"x":"é"}', len(plain))


def test_sizes_count_names_types_and_values() -> None:
    made = entry("k", 0, OutgoingMessage("i", b"{}", {"abe-id": "i", "ab": "xyz"}), 1_048_576)
    attribute = len("String")
    assert made.size == len("{}") + len("abe-id") + attribute + len("i") + len("ab") + attribute + 3


def _entries(*sizes: int) -> list[Entry]:
    return [Entry(index, {}, size) for index, size in enumerate(sizes)]


def test_batches_keep_to_ten_entries_and_one_mib() -> None:
    batches = split_batches(_entries(*([10] * 25)))
    assert [len(batch) for batch in batches] == [10, 10, 5]
    mib = 1_048_576
    batches = split_batches(_entries(400_000, 400_000, 400_000, mib, 1, mib - 1))
    assert [[entry.index for entry in batch] for batch in batches] == [[0, 1], [2], [3], [4, 5]]
    assert [entry.index for batch in batches for entry in batch] == list(range(6))


def _attributes(headers: dict[str, str]) -> dict[str, str]:
    made = entry("k", 0, OutgoingMessage("i", b"{}", headers), 1_048_576)
    attributes = made.params.get("MessageAttributes", {})
    return {name: attribute["StringValue"] for name, attribute in attributes.items()}


def test_published_messages_carry_the_id_and_leave_the_time_to_sqs() -> None:
    generated = {"abe-id": "abc-1", "abe-published-at": "1700000000000"}
    assert _attributes(generated) == {"abe-id": "abc-1"}
    assert _attributes({**generated, "trace": "t"}) == {"abe-id": "abc-1", "trace": "t"}
    letter = {**generated, "abe-error": "E", "abe-attempts": "3", "abe-original-key": "k"}
    assert _attributes(letter) == letter  # a dead letter keeps its original's
    assert _attributes({"trace": "t"}) == {"trace": "t"}


def test_received_messages_get_id_and_time_from_sqs() -> None:
    message = {
        "MessageId": "m-1",
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000123"},
        "MessageAttributes": {"trace": {"DataType": "String", "StringValue": "t"}},
    }
    received = incoming("k", message)
    assert received.headers == {
        "trace": "t",
        "abe-id": "m-1",
        "abe-published-at": "1700000000123",
    }
    assert (received.key, received.broker_id, received.attempt) == ("k", "m-1", 1)
    forwarded = {
        **message,
        "MessageAttributes": {
            "abe-id": {"DataType": "String", "StringValue": "original"},
            "abe-published-at": {"DataType": "String", "StringValue": "1600000000000"},
        },
    }
    assert incoming("k", forwarded).headers == {
        "abe-id": "original",
        "abe-published-at": "1600000000000",
    }
    assert incoming("k", {}).headers == {}
