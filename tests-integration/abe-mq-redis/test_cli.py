"""The `abe` command on Redis: `abe demo`, `abe check` and `abe bench` succeed.

They run against a redis-server of the test's own, which holds no key afterwards: each
command deletes the keys it made.
"""

from __future__ import annotations

import redis
from abe_brokers import RedisServerFactory, run_abe


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
