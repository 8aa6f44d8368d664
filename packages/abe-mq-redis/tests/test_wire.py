"""What goes on the wire: XADD fields, RESP packing, entries read back, connection options."""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
import string
import sys
from pathlib import Path

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.crc import key_slot

from abe.errors import InvalidKeyError, PayloadError
from abe.provider import OutgoingMessage
from abe.settings import Secret
from abe_mq_redis import RedisBackend, RedisSettings
from abe_mq_redis._baseline import RawRedisBaseline
from abe_mq_redis._client import (
    _CancellableSend,
    cancellable,
    connection_kwargs,
    delayed_key,
)
from abe_mq_redis._receiver import RedisReceiver, _message

MESSAGE = OutgoingMessage(
    "m-1", b'{"order":1}', {"abe-id": "m-1", "abe-published-at": "1700000000000", "trace": "t"}
)


def pack(command: tuple[str | bytes | int, ...]) -> bytes:
    """A command as the client sends it: packed by redis-py (by hiredis, where installed)."""
    return b"".join(Connection().pack_commands([command]))


def _unpack(packed: bytes) -> list[bytes]:
    """The arguments of one RESP array of bulk strings."""
    lines = packed.split(b"\r\n")
    assert lines[0].startswith(b"*")
    count = int(lines[0][1:])
    args = lines[2 : 2 * count + 1 : 2]
    for size, arg in zip(lines[1 : 2 * count : 2], args, strict=True):
        assert int(size[1:]) == len(arg)
    return args


def test_pack_is_resp() -> None:
    assert pack(("XACK", "k", "g", 15)) == b"*4\r\n$4\r\nXACK\r\n$1\r\nk\r\n$1\r\ng\r\n$2\r\n15\r\n"
    assert pack(("SET", "ключ", b"\xff\x00")) == (
        b"*3\r\n$3\r\nSET\r\n$8\r\n\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\r\n$2\r\n\xff\x00\r\n"
    )


def test_xadd_puts_the_body_in_data_and_each_header_in_a_field() -> None:
    args = _unpack(pack(RedisBackend()._xadd("orders", MESSAGE)))
    assert args[:3] == [b"XADD", b"orders", b"*"]
    fields = dict(zip(args[3::2], args[4::2], strict=True))
    assert fields == {
        b"data": b'{"order":1}',
        b"abe-id": b"m-1",
        b"abe-published-at": b"1700000000000",
        b"trace": b"t",
    }


def test_xadd_trims_only_when_configured() -> None:
    args = _unpack(pack(RedisBackend(RedisSettings(maxlen=1000))._xadd("orders", MESSAGE)))
    assert args[:6] == [b"XADD", b"orders", b"MAXLEN", b"~", b"1000", b"*"]


def test_entries_read_back() -> None:
    fields = [b"data", b'{"a":1}', b"abe-id", b"m-1", b"trace", b"\xff\xfe"]
    message = _message("orders", [b"1700000000000-0", fields], 1)
    assert message.body == b'{"a":1}'
    assert message.headers == {"abe-id": "m-1", "trace": "\ufffd\ufffd"}
    assert (message.key, message.broker_id, message.handle, message.attempt) == (
        "orders",
        "1700000000000-0",
        "1700000000000-0",
        1,
    )


def test_entries_without_data_have_an_empty_body() -> None:
    message = _message("orders", [b"1-0", [b"payload", b"x"]], 1)
    assert message.body == b""  # core dead-letters it as undecodable
    assert message.headers == {"payload": "x"}


@pytest.mark.parametrize("key", ["orders", "tenant:42:orders", "a.b_c-d", "x" * 1020])
def test_keys_accepted(key: str) -> None:
    assert RedisBackend.key_rules.check(key) == key


@pytest.mark.parametrize("key", ["", "has space", "a/b", "ключ", "a*b", "{tag}", "x" * 1021])
def test_keys_refused(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        RedisBackend.key_rules.check(key)


def test_delayed_set_name() -> None:
    assert delayed_key("orders", "billing") == "abe:{orders}:delayed:billing"


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum of Redis Cluster's key slots, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _slot(key: str) -> int:
    """CLUSTER KEYSLOT: crc16 of the hash tag (first {...} with something inside), mod 16384."""
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return _crc16(data) % 16384


def test_slot_arithmetic_matches_redis() -> None:
    assert _crc16(b"123456789") == 0x31C3  # the reference value of the Redis Cluster spec
    for key in ("orders", "a:b-c.d_e", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap"):
        assert _slot(key) == key_slot(key.encode()), key


_KEY_CHARS = string.ascii_letters + string.digits + "._:-"
_GROUP_CHARS = string.ascii_letters + string.digits + "_-"


def _names(chars: str, longest: int, count: int) -> list[str]:
    """Every single character, the longest name, and `count` random ones (fixed seed)."""
    rng = random.Random(18)
    names = [*chars, chars[0] * longest, ":" * 3, "-dlq"]
    names += ["".join(rng.choices(chars, k=rng.randint(1, 60))) for _ in range(count)]
    return [name[:longest] for name in names]


_KEYS = _names(_KEY_CHARS, RedisBackend.key_rules.max_length - 4, 400)
_GROUPS = _names(_GROUP_CHARS, RedisBackend.group_rules.max_length, 100)


def test_the_delayed_set_is_in_the_streams_slot_and_no_key_can_take_its_name() -> None:
    for key, group in itertools.product(_KEYS, _GROUPS[:20]):
        RedisBackend.key_rules.check(key)
        RedisBackend.group_rules.check(group)
        name = delayed_key(key, group)
        assert _slot(name) == _slot(key), (key, group)
        with pytest.raises(InvalidKeyError):  # '{' (or, for the longest keys, the length)
            RedisBackend.key_rules.check(name)


def test_each_key_and_group_has_a_delayed_set_of_its_own() -> None:
    pairs = list(itertools.product(_KEYS[:200], _GROUPS[:50]))
    pairs += [("a:b", "c"), ("a", "b:c"), ("a}:delayed:b", "c")]  # the last is no key at all
    assert len({delayed_key(key, group) for key, group in pairs}) == len(set(pairs))


def test_connection_options_tcp() -> None:
    settings = RedisSettings(
        url="redis://cache:6380/2?client_name=svc",
        username="alice",
        password=Secret("pw"),
        operation_timeout=3.0,
    )
    kwargs = connection_kwargs(settings, socket_timeout=4.0)
    assert kwargs["host"] == "cache"
    assert kwargs["port"] == 6380
    assert kwargs["db"] == 2
    assert kwargs["client_name"] == "svc"
    assert (kwargs["username"], kwargs["password"]) == ("alice", "pw")
    assert kwargs["socket_timeout"] == 4.0
    assert kwargs["socket_connect_timeout"] == 3.0
    assert kwargs["protocol"] == 2
    assert issubclass(kwargs.get("connection_class", Connection), Connection)
    assert kwargs["socket_keepalive"] is True


def test_connection_options_tls(tmp_path: Path) -> None:
    ca, pki = tmp_path / "ca.pem", Path(__file__).parent / "pki"
    ca.write_text("x")  # read by redis-py only when it connects
    settings = RedisSettings(
        url="rediss://cache:6380/0",
        tls_ca_file=ca,
        tls_cert_file=pki / "client.pem",  # loaded with its key when the settings are checked
        tls_key_file=pki / "client-key.pem",
    )
    kwargs = connection_kwargs(settings, socket_timeout=1.0)
    assert issubclass(kwargs["connection_class"], SSLConnection)
    assert kwargs["ssl_ca_certs"] == str(ca)
    assert kwargs["ssl_certfile"] == str(pki / "client.pem")
    assert kwargs["ssl_keyfile"] == str(pki / "client-key.pem")


@pytest.mark.parametrize("url", ["rediss://cache:6380/0", "rediss://cache:6380/0?client_name=s"])
def test_tls_checks_the_certificate_and_the_host_name(url: str) -> None:
    """Set explicitly: redis-py 5.x does not check the host name unless told, 8.x does."""
    kwargs = connection_kwargs(RedisSettings(url=url), socket_timeout=1.0)
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    connection = ConnectionPool(**kwargs).make_connection()
    assert connection.ssl_context.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ssl_context.check_hostname is True


@pytest.mark.parametrize(
    ("query", "cert_reqs", "check_hostname"),
    [
        ("ssl_cert_reqs=none", "none", False),  # no chain checked: no name to check either
        ("ssl_check_hostname=false", "required", False),
        ("ssl_cert_reqs=optional", "optional", True),
    ],
)
def test_tls_checks_can_be_turned_off_only_in_the_url(
    query: str, cert_reqs: str, check_hostname: bool
) -> None:
    kwargs = connection_kwargs(RedisSettings(url=f"rediss://h/0?{query}"), socket_timeout=1)
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == (cert_reqs, check_hostname)
    ConnectionPool(**kwargs).make_connection().ssl_context.get()  # a context redis-py can build


@pytest.mark.asyncio
async def test_the_raw_baseline_checks_the_host_name_too(monkeypatch: pytest.MonkeyPatch) -> None:
    async def pong(self: Redis) -> bool:
        return True

    monkeypatch.setattr(Redis, "ping", pong)
    baseline = RawRedisBaseline(RedisSettings(url="rediss://cache:6380/0"))
    client = await baseline._connect("k")
    options = client.connection_pool.connection_kwargs
    assert (options["ssl_cert_reqs"], options["ssl_check_hostname"]) == ("required", True)
    baseline._keys.clear()  # nothing to delete on a server that does not exist
    await baseline.close()


def test_connection_options_unix() -> None:
    kwargs = connection_kwargs(RedisSettings(url="unix:///run/redis.sock?db=3"), socket_timeout=1)
    assert issubclass(kwargs["connection_class"], UnixDomainSocketConnection)
    assert kwargs["path"] == "/run/redis.sock"
    assert kwargs["db"] == 3
    assert "socket_keepalive" not in kwargs


def test_describe_never_shows_query_options() -> None:
    backend = RedisBackend(RedisSettings(url="redis://cache:6379/0?client_name=svc"))
    assert backend._describe() == "redis://cache:6379/0"


def test_credit_is_shared_between_keys() -> None:
    receiver = RedisReceiver.__new__(RedisReceiver)  # only the key-sharing arithmetic
    receiver.keys = ("a", "b", "c")
    receiver._turn = 0
    assert receiver._share(100) == (("a", "b", "c"), 33)
    assert receiver._share(3) == (("a", "b", "c"), 1)
    assert receiver._share(2) == (("a", "b"), 1)
    assert receiver._share(2) == (("c", "a"), 1)
    assert receiver._share(1) == (("b",), 1)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://h", Connection),
        ("rediss://h", SSLConnection),
        ("unix:///s.sock", UnixDomainSocketConnection),
    ],
)
def test_writes_keep_cancellation_before_python_3_12(url: str, base: type) -> None:
    kwargs = connection_kwargs(RedisSettings(url=url), socket_timeout=1)
    connection_class = kwargs.get("connection_class", Connection)
    assert issubclass(connection_class, base)
    assert issubclass(connection_class, _CancellableSend) is (sys.version_info < (3, 12))


@pytest.mark.asyncio
async def test_a_cancelled_write_is_not_swallowed() -> None:
    """The write is bounded by a timeout context, not asyncio.wait_for (CPython gh-86296)."""
    connection = cancellable(Connection)(host="127.0.0.1", port=1, socket_timeout=5)
    sent: list[bytes] = []

    async def parent_send(self: object, command: object, check_health: bool = True) -> None:
        assert connection.socket_timeout is None  # no wait_for around the write
        sent.append(b"x")
        await asyncio.sleep(10)

    original = Connection.send_packed_command
    Connection.send_packed_command = parent_send  # type: ignore[assignment,method-assign]
    try:
        task = asyncio.ensure_future(connection.send_packed_command(b"PING"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        Connection.send_packed_command = original  # type: ignore[method-assign]
    assert sent == [b"x"]
    assert connection.socket_timeout == 5


@pytest.mark.asyncio
async def test_reads_and_writes_are_the_plain_commands() -> None:
    async with RedisBackend() as backend:
        receiver = RedisReceiver(backend.client, "billing", ("orders", "refunds"), "host-1-1")
        for block_ms in (0, 1, 250):  # never BLOCK 0, which would wait forever
            expected = ["XREADGROUP", "GROUP", "billing", "host-1-1", "COUNT", 50]
            expected += ["BLOCK", block_ms] if block_ms else []
            expected += ["STREAMS", "orders", "refunds", ">", ">"]
            command = receiver._xreadgroup(("orders", "refunds"), 50, block_ms)
            assert pack(command) == pack(expected)
        message = OutgoingMessage("m", b"{}", {"abe-id": "m", "h": "ü"})
        assert pack(backend._xadd("orders", message)) == pack(
            ("XADD", "orders", "*", "data", b"{}", "abe-id", "m", "h", "ü")
        )


@pytest.mark.asyncio
async def test_a_header_named_data_is_refused_before_any_io() -> None:
    backend = RedisBackend(RedisSettings(url="redis://127.0.0.1:1/0"))  # nothing listens there
    with pytest.raises(PayloadError, match="'data' is reserved by the redis wire format"):
        await backend.publish("orders", {"x": 1}, headers={"data": "oops"})
    await backend.close()
