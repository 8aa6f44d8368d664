"""The wire codec: which payloads are refused (and how the error says so), encoding, ids."""

from __future__ import annotations

import base64
import enum
import json
import subprocess
import sys
import textwrap
from collections import OrderedDict, defaultdict
from typing import Any

import pytest

from abe.backends.message_queue.base.codec import (
    UndecodableBody,
    decode_body,
    encode_payload,
    new_message_id,
    wrap_undecodable,
)
from abe.errors import PayloadError

LIMIT = 1_000_000


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Plain(enum.Enum):
    ONE = 1


def refuse(payload: object, max_bytes: int = LIMIT) -> str:
    """The message of the PayloadError that encoding `payload` raises."""
    with pytest.raises(PayloadError) as refused:
        encode_payload(payload, max_bytes)
    return str(refused.value)


# ---- refused payloads: each message names where the problem is and how to fix it ------------


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        pytest.param([1, 2], ("payload must be a dict, got list", "wrap it"), id="list"),
        pytest.param("text", ("payload must be a dict, got str", "wrap it"), id="str"),
        pytest.param(None, ("payload must be a dict, got NoneType", "wrap it"), id="none"),
        pytest.param(
            {"items": [1, 2, (3, 4)]},
            ("payload['items'][2] is a tuple", "Use a list"),
            id="nested-tuple",
        ),
        pytest.param({"pair": (1, 2)}, ("payload['pair'] is a tuple", "Use a list"), id="tuple"),
        pytest.param(
            {1: "one"},
            ("payload has the key 1 (int)", "come back as '1'", "Use a string key"),
            id="int-key",
        ),
        pytest.param(
            {"inner": {None: 1}},
            ("payload['inner'] has the key None (NoneType)", "Use a string key"),
            id="nested-none-key",
        ),
        pytest.param(
            {"flags": {True: "yes"}},
            ("payload['flags'] has the key True (bool)", "Use a string key"),
            id="bool-key",
        ),
        pytest.param(
            {"value": float("nan")},
            ("payload['value'] is nan", "JSON cannot represent", "send null or a string"),
            id="nan",
        ),
        pytest.param(
            {"deep": [{"x": float("inf")}]},
            ("payload['deep'][0]['x'] is inf", "send null or a string"),
            id="inf",
        ),
        pytest.param({"value": float("-inf")}, ("payload['value'] is -inf",), id="negative-inf"),
        pytest.param(
            {"tags": {"a", "b"}},
            ("payload['tags'] is a set", "not JSON-serialisable", "convert it to a str"),
            id="set",
        ),
        pytest.param(
            {"raw": [b"\x00"]}, ("payload['raw'][0] is a bytes", "convert it"), id="bytes"
        ),
        pytest.param({"when": object()}, ("payload['when'] is a object",), id="object"),
        pytest.param({"level": Plain.ONE}, ("payload['level'] is a Plain",), id="plain-enum"),
    ],
)
def test_refused_payload_names_the_path_and_the_fix(
    payload: object, fragments: tuple[str, ...]
) -> None:
    message = refuse(payload)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"


def test_refused_inside_an_accepted_subclass_still_names_the_path() -> None:
    payload = OrderedDict(outer=OrderedDict(bad={1, 2}))
    assert "payload['outer']['bad'] is a set" in refuse(payload)


def test_payload_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        encode_payload(["not", "a", "dict"], LIMIT)


# ---- accepted payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="empty"),
        pytest.param(
            {"n": None, "b": [True, False], "f": -0.5, "i": 10**30, "s": "é✓"}, id="plain"
        ),
        pytest.param({"colour": Colour.RED}, id="str-enum"),
        pytest.param({"level": Level.HIGH, "levels": [Level.HIGH]}, id="int-enum"),
        pytest.param(OrderedDict(b=1, a=OrderedDict(z=[1])), id="ordered-dict"),
        pytest.param({"counts": defaultdict(int, a=1)}, id="defaultdict"),
    ],
)
def test_accepted_payloads_come_back_equal(payload: dict[str, Any]) -> None:
    decoded = decode_body(encode_payload(payload, LIMIT))
    assert decoded == payload
    assert type(decoded) is dict


def test_a_str_enum_and_an_int_enum_are_sent_as_their_values() -> None:
    body = encode_payload({"colour": Colour.RED, "level": Level.HIGH}, LIMIT)
    assert json.loads(body) == {"colour": "red", "level": 3}


def test_body_is_compact_utf8_json_and_nothing_else() -> None:
    body = encode_payload({"a": "é", "b": [1, 2]}, LIMIT)
    assert body == '{"a":"é","b":[1,2]}'.encode()


ASCII_TEXT = "".join(map(chr, range(0x7F)))  # every ASCII character but DEL, controls too


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"s": ASCII_TEXT}, id="flat"),
        pytest.param({ASCII_TEXT: [ASCII_TEXT, {"k": ASCII_TEXT}]}, id="nested"),
        pytest.param({"n": None, "i": 1, "f": 0.5, "b": True, "l": []}, id="no-strings"),
    ],
)
def test_an_ascii_payload_is_written_as_json_writes_it(payload: dict[str, Any]) -> None:
    """Written with json's faster ASCII escaper, the body is the same as before, byte for byte."""
    expected = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert encode_payload(payload, LIMIT) == expected


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"a": "x", "b": "é"}, id="flat-value"),
        pytest.param({"é": 1}, id="flat-key"),
        pytest.param({"a": {"b": ["x", "✓"]}}, id="nested-value"),
        pytest.param({"a": [{"x": 1}, {"é": 1}]}, id="nested-key"),
    ],
)
def test_a_non_ascii_string_anywhere_stays_utf8(payload: dict[str, Any]) -> None:
    body = encode_payload(payload, LIMIT)
    assert b"\\u" not in body  # é and ✓ as UTF-8, not as longer \u escapes
    assert decode_body(body) == payload


def test_a_delete_character_comes_back_as_it_went() -> None:
    """The one ASCII character json's two escapers write differently: as itself or escaped."""
    payload = {"a": "\x7f", "b": ["x\x7fy"]}
    assert decode_body(encode_payload(payload, LIMIT)) == payload


# ---- size limit ----------------------------------------------------------------------------


def test_size_limit_boundary_is_exact() -> None:
    payload = {"blob": "x" * 100}
    size = len(b'{"blob":""}') + 100
    assert len(encode_payload(payload, size)) == size
    message = refuse(payload, size - 1)
    assert f"payload is {size:,} bytes as JSON" in message
    assert f"limit of {size - 1:,}" in message
    assert "send a reference" in message


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    payload = {"a": "é" * 10}  # 10 characters, 20 bytes
    size = len(b'{"a":""}') + 20
    encode_payload(payload, size)
    refuse(payload, size - 1)


# ---- bodies from the wire ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "a list"), (b'"text"', "a string"), (b"3", "a number"), (b"null", "null")],
)
def test_decode_body_refuses_json_that_is_not_an_object(body: bytes, kind: str) -> None:
    with pytest.raises(ValueError, match=f"the body is JSON but {kind}, not an object"):
        decode_body(body)


@pytest.mark.parametrize("body", [b"not json", b"", b"{", b"\xff\xfe\x00garbage"])
def test_decode_body_refuses_what_is_not_json(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (json's own messages vary)
        decode_body(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"[" * 1000 + b"]" * 1000, "the body is ", id="nested-1000"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nested-100000"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply", id="objects"),
        pytest.param(b"\xff\xfe not json", "not UTF-8 text (byte 0xff at position 0)", id="utf16"),
        pytest.param(b'{"s": "\xed\xa0\x80"}', "not UTF-8 text", id="encoded-surrogate"),
        pytest.param(b"", "the body is empty", id="empty"),
        pytest.param(b"   ", "not JSON", id="blank"),
        pytest.param(b'{"x": NaN}', "contains NaN", id="nan"),
        pytest.param(b'{"x": -Infinity}', "contains -Infinity", id="infinity"),
        pytest.param(b'{"n": ' + b"1" * 5000 + b"}", "5,000 digits", id="long-int"),
        pytest.param(b'{"a": 1} {"b": 2}', "not JSON: Extra data", id="two-objects"),
    ],
)
def test_a_hostile_body_is_refused_with_a_reason_and_nothing_else(body: bytes, reason: str) -> None:
    with pytest.raises(UndecodableBody) as refused:
        decode_body(body)
    if reason == "5,000 digits" and sys.version_info >= (3, 11):
        reason = "5000 digits"  # Python's own limit speaks first
    assert reason in str(refused.value)
    assert "utf-16" not in str(refused.value).lower()


def test_a_body_over_the_limit_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(UndecodableBody, match="the body is 12 bytes, over this backend's limit"):
        decode_body(b'{"a": "xyz"}', max_bytes=11)
    assert decode_body(b'{"a": "xyz"}', max_bytes=12) == {"a": "xyz"}


def test_wrap_undecodable_summarises_a_body_too_large_to_carry() -> None:
    body = b"\xff" * 1000
    wrapped = decode_body(wrap_undecodable(body, max_bytes=500))
    omitted = wrapped["undecodable_body_omitted"]
    assert omitted["bytes"] == 1000
    assert len(omitted["sha256"]) == 64


def test_decode_body_reads_a_foreign_producers_json() -> None:
    assert decode_body(b' {"id": 1, "tags": ["a"]} ') == {"id": 1, "tags": ["a"]}


def test_wrap_undecodable_keeps_a_utf8_body_as_text() -> None:
    wrapped = wrap_undecodable("not jsön".encode())
    assert decode_body(wrapped) == {"undecodable_body": "not jsön"}


def test_wrap_undecodable_keeps_other_bytes_as_base64() -> None:
    body = b"\xff\x00\xfe binary"
    wrapped = decode_body(wrap_undecodable(body))
    assert set(wrapped) == {"undecodable_body_base64"}
    assert base64.b64decode(wrapped["undecodable_body_base64"]) == body


# ---- ids ----------------------------------------------------------------------------------


def test_message_ids_are_unique_and_share_the_process_prefix() -> None:
    ids = [new_message_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    prefixes = {message_id.split("-")[0] for message_id in ids}
    assert len(prefixes) == 1
    assert len(prefixes.pop()) == 16


def test_message_ids_differ_between_processes() -> None:
    code = "from abe.backends.message_queue.base.codec import new_message_id as n; print(n())"
    run = [sys.executable, "-c", code]
    first, second = (
        subprocess.run(run, capture_output=True, text=True, check=True, timeout=60).stdout
        for _ in range(2)
    )
    assert first.strip() != second.strip()


# ---- payloads JSON cannot carry: cycles, depth, huge integers ---------------------------------


def test_an_int_too_long_for_json_is_a_payload_error() -> None:
    assert "payload" in refuse({"n": 10**5000})


def test_a_payload_nested_too_deep_is_a_payload_error() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    refuse({"deep": nested})


def test_a_self_referencing_dict_subclass_is_a_payload_error() -> None:
    payload: OrderedDict[str, Any] = OrderedDict()
    payload["self"] = payload
    refuse(payload)


def test_a_self_referencing_dict_is_refused_instead_of_hanging() -> None:
    # Run in a child process: in this one the loop would never end.
    code = textwrap.dedent(
        """
        from abe.backends.message_queue.base.codec import encode_payload
        from abe.errors import PayloadError
        payload = {}
        payload["self"] = payload
        try:
            encode_payload(payload, 1000)
        except PayloadError:
            print("refused")
        """
    )
    try:
        finished = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=3
        )
    except subprocess.TimeoutExpired:
        pytest.fail("encoding a self-referencing dict did not return within 3s")
    assert finished.stdout.strip() == "refused", finished.stderr


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"a": 1}',
        b' {"a": 1}',
        b'{"a": 1}\n',
        b'{"a": {"b": [1, 2.5, "\\u00e9", null, true]}, "c": "x"}',
        '{"é": "ü"}'.encode(),
    ],
)
def test_decode_body_reads_what_json_reads(body: bytes) -> None:
    assert decode_body(body) == json.loads(body)


@pytest.mark.parametrize(
    "body", [b"{", b'{"a": }', b'{"a": 1', b'{"a": 1}x', b'{"a": 1} ]', b"{'a': 1}"]
)
def test_decode_body_refuses_a_broken_object_with_jsons_own_reason(body: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(body)
    with pytest.raises(UndecodableBody) as refused:
        decode_body(body)
    assert str(refused.value) == f"the body is not JSON: {expected.value}"
