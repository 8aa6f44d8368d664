"""The `abe` command on Redis: `abe demo` and `abe check` succeed.

They run against a redis-server of the test's own: both leave their keys behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

from abe_brokers import RedisServerFactory


def _abe(command: str, url: str) -> str:
    env = {
        name: value for name, value in os.environ.items() if not name.startswith(("REDIS_", "ABE_"))
    }
    env.update(QUEUE_BACKEND="redis", REDIS_URL=url, NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "abe", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_abe_demo(redis_server_factory: RedisServerFactory) -> None:
    output = _abe("demo", redis_server_factory().url)
    assert "backend: redis (abe-mq-redis" in output
    assert "OK: all 39 good orders were packed" in output


def test_abe_check(redis_server_factory: RedisServerFactory) -> None:
    output = _abe("check", redis_server_factory().url)
    assert "OK: redis round trip" in output
