"""What goes on the wire: headers with Nats-Msg-Id, the size check against max_payload."""

from __future__ import annotations

import pytest

from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.errors import PayloadError
from abe_mq_nats import NatsBackend, NatsSettings
from abe_mq_nats._backend import HEADER_ROOM, MAX_HEADERS, MSG_ID, _headers


def message(body: bytes = b'{"a":1}', **headers: str) -> OutgoingMessage:
    return OutgoingMessage(
        "id-1", body, {"abe-id": "id-1", "abe-published-at": "1700000000000", **headers}
    )


def test_headers_carry_the_id_for_deduplication() -> None:
    original = message(trace="t-1")
    headers = _headers(original, 1_048_576, None)
    assert headers == {
        "abe-id": "id-1",
        "abe-published-at": "1700000000000",
        "trace": "t-1",
        MSG_ID: "id-1",
    }
    assert MSG_ID not in original.headers, "the outgoing message itself is left alone"


def test_size_counts_headers_against_max_payload() -> None:
    limit = 4096
    plain = message(b"x" * 3900)
    _headers(plain, limit, 0)
    with pytest.raises(PayloadError, match="max_payload of 4,096"):
        _headers(message(b"x" * 3900, big="y" * 200), limit, 3)
    with pytest.raises(PayloadError, match=r"payloads\[3\]"):
        _headers(message(b"x" * 3900, big="y" * 200), limit, 3)
    non_ascii = message(b"x" * 3900, note="é" * 60)  # 60 characters, 120 bytes
    with pytest.raises(PayloadError):
        _headers(non_ascii, 4090, 0)  # 4,046 bytes if counted as characters, 4,106 in fact


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name", ["has space", "colon:name", "tab\tname", "ünïcode", "Nats-Rollup", "nats-msg-id"]
)
async def test_header_names_nats_cannot_carry_are_refused_before_any_io(name: str) -> None:
    backend = NatsBackend(NatsSettings(servers=("nats://127.0.0.1:1",), operation_timeout=0.5))
    with pytest.raises(PayloadError, match="header name"):  # core's rules, no connection tried
        await backend.publish("orders", {"a": 1}, headers={name: "v"})
    assert backend._jetstream.client is None
    await backend.close()


def test_a_dead_letter_drops_the_nats_control_headers_of_the_message_it_copies() -> None:
    copied = message(**{"Nats-Rollup": "sub", "nats-expected-stream": "s", "Nats-Msg-Id": "x"})
    headers = _headers(copied, 1_048_576, None)
    assert headers == {"abe-id": "id-1", "abe-published-at": "1700000000000", MSG_ID: "id-1"}


def test_headers_over_what_jetstream_stores() -> None:
    copied = message(**{f"h{n}": "v" * 100 for n in range(700)})  # a foreign message's
    with pytest.raises(PayloadError, match=f"over the {MAX_HEADERS:,} JetStream stores"):
        _headers(copied, 8 * 1_048_576, None)
    _headers(message(**{f"h{n}": "v" * 100 for n in range(600)}), 8 * 1_048_576, None)


def test_max_payload_follows_the_server() -> None:
    backend = NatsBackend(NatsSettings())
    assert backend.max_payload_bytes == 1_048_576 - HEADER_ROOM
    backend._jetstream.max_payload = 8 * 1_048_576
    assert backend.max_payload_bytes == 8 * 1_048_576 - HEADER_ROOM
    backend._jetstream.max_payload = 4096
    assert backend.max_payload_bytes == 4096 - 512
