"""The getting-started, writing-a-provider and RabbitMQ pages, run as their reader runs them.

Each page runs in a new HOME, from `~/abe`, a folder laid out as a clone of abe after
`nox -s build` (dist/ holds wheels built from this checkout): the page's own commands
make its virtualenv and install from there, and its Redis steps reach the CI broker.
page_runner.py says how blocks become steps and how shown output is checked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from page_runner import run_page
from reader import ROOT, Reader

DOCS = ROOT / "docs"
PAGE_REDIS_URL = "redis://localhost:6379/0"
"""The Redis the getting-started page points abe at ("point abe at a Redis server")."""
PAGE_REDIS_KEYS = ("orders", "orders-dlq")
"""The keys the getting-started page writes to Redis: emptied before and after it runs."""


def _same_redis(page_url: str, url: str) -> bool:
    """Whether `url` is the Redis the page's URL reaches: loopback, same port and database."""
    loopback = {"localhost", "127.0.0.1", "::1"}
    page, other = urlsplit(page_url), urlsplit(url)
    return (
        other.hostname in loopback
        and (other.port or 6379) == page.port
        and other.path.strip("/") in ("", "0")
        and not other.username
        and not other.password
    )


def _delete_keys(url: str, keys: tuple[str, ...]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.delete(*keys)
    finally:
        client.close()


def test_getting_started(reader: Reader, request: pytest.FixtureRequest) -> None:
    """From nothing to a worker on Redis: memory first, then the CI's Redis."""
    url = request.getfixturevalue("redis_broker").url
    replacements = reader.replacements()
    if not _same_redis(PAGE_REDIS_URL, url):
        replacements.append((PAGE_REDIS_URL, url))  # the page says: point it at your server
    _delete_keys(url, PAGE_REDIS_KEYS)  # a new group starts from the oldest message kept
    try:
        run_page(
            DOCS / "getting-started.md",
            cwd=reader.clone,
            env=reader.env,
            replacements=replacements,
        )
    finally:
        _delete_keys(url, PAGE_REDIS_KEYS)


PAGE_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The RabbitMQ the RabbitMQ page points abe at."""


def test_rabbitmq_page(reader: Reader, request: pytest.FixtureRequest) -> None:
    """The RabbitMQ page from a clone: install from dist/, then `abe check` on the broker."""
    url = request.getfixturevalue("rabbitmq_broker").url
    replacements = reader.replacements()
    if url != PAGE_RABBITMQ_URL:
        replacements.append((PAGE_RABBITMQ_URL, url))  # the page says: point it at yours
    run_page(
        DOCS / "providers" / "rabbitmq.md",
        cwd=reader.clone,
        env=reader.env,
        replacements=replacements,
    )


def test_writing_a_provider(reader: Reader) -> None:
    """`abe new-provider`, the steps it prints, and the rendered provider's checks and build."""
    run_page(
        DOCS / "writing-a-provider.md",
        cwd=reader.clone,
        env=reader.env,
        replacements=reader.replacements(),
    )
