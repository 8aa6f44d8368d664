"""The public surface: the backend class, its settings and the version, nothing else."""

from __future__ import annotations

import importlib.metadata

import abe_mq_sqs
from abe.backends.message_queue.base import BackendSettings, BaseBackend
from abe.types import MessageQueueBackendProtocol
from abe_mq_sqs import SqsBackend, SqsSettings


def test_all_is_the_backend_its_settings_and_the_version() -> None:
    assert abe_mq_sqs.__all__ == ["SqsBackend", "SqsSettings", "__version__"]
    public = {name for name in dir(abe_mq_sqs) if not name.startswith("_")}
    assert public == {"SqsBackend", "SqsSettings"}


def test_classes() -> None:
    assert issubclass(SqsBackend, BaseBackend)
    assert issubclass(SqsSettings, BackendSettings)
    assert SqsBackend.name == "sqs"
    backend = SqsBackend(SqsSettings(region="us-east-1"))
    assert isinstance(backend, MessageQueueBackendProtocol)


def test_one_entry_point_and_one_version() -> None:
    distribution = importlib.metadata.distribution("abe-mq-sqs")
    points = [p for p in distribution.entry_points if p.group != "console_scripts"]
    assert [(p.group, p.name, p.value) for p in points] == [
        ("abe.backends.message_queue", "sqs", "abe_mq_sqs:SqsBackend")
    ]
    assert distribution.version == abe_mq_sqs.__version__
