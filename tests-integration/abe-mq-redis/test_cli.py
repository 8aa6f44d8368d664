"""The `abe` command on Redis: `abe demo`, `abe check`, `abe bench` and `abe consume` succeed.

They run against a redis-server of the test's own, which holds no key afterwards: each
command deletes the keys it made (`abe consume` its group, keeping the messages).
"""

from __future__ import annotations

import inspect
import json

import pytest
import redis
from abe_brokers import RedisServerFactory, TlsFiles, run_abe
from redis.asyncio.connection import RedisSSLContext


def _abe(url: str, *arguments: str) -> str:
    output = run_abe("redis", {"REDIS_URL": url}, *arguments)
    client = redis.Redis.from_url(url)
    try:
        assert client.keys() == [], f"abe {arguments[0]} left keys behind"
    finally:
        client.close()
    return output


def test_abe_demo(redis_server_factory: RedisServerFactory) -> None:
    output = _abe(redis_server_factory().url, "demo")
    assert "backend: redis (abe-mq-redis" in output
    assert "OK: all 39 good orders were packed" in output


def test_abe_check(redis_server_factory: RedisServerFactory) -> None:
    output = _abe(redis_server_factory().url, "check")
    assert "OK: redis round trip" in output


def test_abe_bench(redis_server_factory: RedisServerFactory) -> None:
    output = _abe(redis_server_factory().url, "bench", "--messages", "200")
    assert "redis-py" in output  # the raw client measured beside abe


def test_abe_consume_leaves_no_group_behind(redis_server_factory: RedisServerFactory) -> None:
    url = redis_server_factory().url
    client = redis.Redis.from_url(url)

    def state() -> tuple[list[bytes], list[dict[str, object]], int]:
        return sorted(client.keys()), client.xinfo_groups("orders"), client.xlen("orders")

    try:
        for number in range(3):
            client.xadd("orders", {"data": json.dumps({"number": number})})
        client.xgroup_create("orders", "packers", id="0")  # another reader's state stays
        before = state()
        output = run_abe("redis", {"REDIS_URL": url}, "consume", "orders", "--count", "3")
        assert [json.loads(line) for line in output.splitlines() if line.startswith("{")] == [
            {"number": number} for number in range(3)
        ]
        assert state() == before, "abe consume left group state behind"
        assert [group["name"] for group in before[1]] == [b"packers"]
    finally:
        client.close()


@pytest.mark.skipif(
    "password" not in inspect.signature(RedisSSLContext).parameters,
    reason="this redis-py has no ssl_password (added in 6.x)",
)
def test_no_command_shows_a_secret_query_option(
    redis_server_factory: RedisServerFactory, tls_files: TlsFiles
) -> None:
    server = redis_server_factory(tls=tls_files)
    environ = {
        "REDIS_URL": f"{server.url}?ssl_password=Opt1on%3BS3cret",  # for an encrypted key
        "REDIS_TLS_CA_FILE": str(tls_files.ca_cert),
    }
    listed = run_abe("redis", environ, "backends")
    assert "ssl_password=***" in listed, listed
    checked = run_abe("redis", environ, "check")
    assert "OK: redis round trip" in checked, checked
    for output in (listed, checked):
        assert "Opt1on" not in output, output
        assert "S3cret" not in output, output
