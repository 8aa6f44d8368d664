"""The public surface: the backend class, its settings and the version; one entry point."""

from __future__ import annotations

import importlib.metadata

import pytest
from abe import MessageQueueBackend, load_backend
from abe.backends.message_queue.loader import load_backend_class

import abe_mq_rabbitmq
from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings


def test_all_is_the_two_classes_and_the_version() -> None:
    assert sorted(abe_mq_rabbitmq.__all__) == [
        "RabbitmqBackend",
        "RabbitmqSettings",
        "__version__",
    ]
    public = {name for name in dir(abe_mq_rabbitmq) if not name.startswith("_")}
    assert public == {"RabbitmqBackend", "RabbitmqSettings"}


def test_version_is_the_distribution_version() -> None:
    version = importlib.metadata.version("abe-mq-rabbitmq")
    assert abe_mq_rabbitmq.__version__ == version


def test_one_entry_point_and_the_loader_finds_it() -> None:
    points = [
        point
        for point in importlib.metadata.distribution("abe-mq-rabbitmq").entry_points
        if point.group == "abe.backends.message_queue"
    ]
    assert [point.name for point in points] == ["rabbitmq"]
    assert points[0].value == "abe_mq_rabbitmq:RabbitmqBackend"
    assert load_backend_class("rabbitmq") is RabbitmqBackend


@pytest.mark.asyncio
async def test_load_backend_builds_it_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in RabbitmqBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("QUEUE_BACKEND", "rabbitmq")
    backend = load_backend()
    assert type(backend) is RabbitmqBackend
    assert isinstance(backend, MessageQueueBackend)
    assert backend.name == "rabbitmq"
    assert backend.settings == RabbitmqSettings()
    await backend.close()
    assert repr(backend).endswith(" amqp://***@127.0.0.1:5672/ closed>")
