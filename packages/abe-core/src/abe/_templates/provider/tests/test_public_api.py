"""The public surface: the backend class, its settings and the version; one entry point."""

from __future__ import annotations

import importlib.metadata

import pytest
from abe import MessageQueueBackend, load_backend
from abe.backends.message_queue.loader import load_backend_class

import abe_mq_example
from abe_mq_example import ExampleBackend, ExampleSettings


def test_all_is_the_two_classes_and_the_version() -> None:
    assert sorted(abe_mq_example.__all__) == [
        "ExampleBackend",
        "ExampleSettings",
        "__version__",
    ]
    public = {name for name in dir(abe_mq_example) if not name.startswith("_")}
    assert public == {"ExampleBackend", "ExampleSettings"}


def test_version_is_the_distribution_version() -> None:
    version = importlib.metadata.version("abe-mq-example")
    assert abe_mq_example.__version__ == version


def test_one_entry_point_and_the_loader_finds_it() -> None:
    points = [
        point
        for point in importlib.metadata.distribution("abe-mq-example").entry_points
        if point.group == "abe.backends.message_queue"
    ]
    assert [point.name for point in points] == ["example"]
    assert points[0].value == "abe_mq_example:ExampleBackend"
    assert load_backend_class("example") is ExampleBackend


@pytest.mark.asyncio
async def test_load_backend_builds_it_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ExampleBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("QUEUE_BACKEND", "example")
    backend = load_backend()
    assert type(backend) is ExampleBackend
    assert isinstance(backend, MessageQueueBackend)
    assert backend.name == "example"
    assert backend.settings == ExampleSettings()
    await backend.close()
    assert repr(backend).endswith(" example://localhost:7000 closed>")
