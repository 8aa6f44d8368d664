"""The public surface: the backend class, its settings, the version; one entry point."""

from __future__ import annotations

import importlib.metadata
import types

import abe_mq_redis
from abe.backends.message_queue.base import BaseBackend
from abe.backends.message_queue.loader import load_backend_class
from abe_mq_redis import RedisBackend, RedisSettings


def test_all_is_the_backend_its_settings_and_the_version() -> None:
    assert abe_mq_redis.__all__ == ["RedisBackend", "RedisSettings", "__version__"]
    public = {
        name
        for name in dir(abe_mq_redis)
        if not name.startswith("_")
        and not isinstance(getattr(abe_mq_redis, name), types.ModuleType)
    }
    assert public == {"RedisBackend", "RedisSettings"}


def test_version_is_the_distribution_version() -> None:
    assert abe_mq_redis.__version__ == importlib.metadata.version("abe-mq-redis")


def test_one_entry_point_named_redis() -> None:
    points = [
        point
        for point in importlib.metadata.distribution("abe-mq-redis").entry_points
        if point.group == "abe.backends.message_queue"
    ]
    assert [(point.name, point.value) for point in points] == [
        ("redis", "abe_mq_redis:RedisBackend")
    ]
    assert load_backend_class("redis") is RedisBackend


def test_backend_shape() -> None:
    assert issubclass(RedisBackend, BaseBackend)
    assert RedisBackend.name == "redis"
    assert RedisBackend.capabilities.remote
    assert RedisBackend.capabilities.fan_out
    assert RedisBackend.capabilities.per_key_ordering
    backend = RedisBackend()  # no I/O until used
    assert isinstance(backend.settings, RedisSettings)
    assert repr(backend) == "<RedisBackend redis://localhost:6379/0 open>"
