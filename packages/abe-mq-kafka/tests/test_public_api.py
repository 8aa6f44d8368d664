"""The public surface: the backend, its settings and the version; registered as `kafka`."""

from __future__ import annotations

from importlib.metadata import entry_points

import abe_mq_kafka
from abe.backends.message_queue.base import BaseBackend
from abe.types import MessageQueueBackendProtocol
from abe_mq_kafka import KafkaBackend, KafkaSettings


def test_all_is_the_backend_its_settings_and_the_version() -> None:
    assert abe_mq_kafka.__all__ == ["KafkaBackend", "KafkaSettings", "__version__"]
    public = {name for name in vars(abe_mq_kafka) if not name.startswith("_")}
    assert public == {"KafkaBackend", "KafkaSettings"}


def test_entry_point() -> None:
    (entry,) = [e for e in entry_points(group="abe.backends.message_queue") if e.name == "kafka"]
    assert entry.value == "abe_mq_kafka:KafkaBackend"
    assert entry.load() is KafkaBackend


def test_backend_satisfies_the_protocol_without_io() -> None:
    backend = KafkaBackend(KafkaSettings(bootstrap_servers=("127.0.0.1:1",)))
    assert isinstance(backend, BaseBackend)
    assert isinstance(backend, MessageQueueBackendProtocol)
    assert backend.name == "kafka"
    assert repr(backend) == "<KafkaBackend bootstrap=127.0.0.1:1 open>"
    assert backend.max_payload_bytes == 1_000_000
    assert backend.capabilities.per_key_ordering is False
    assert backend.raw_baseline().name.startswith("aiokafka ")


def test_readme_table_is_the_variable_declarations() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    expected = [
        f"| `{v.name}` | {'' if v.default is None else f'`{v.default}`'} | {v.meaning} |"
        for v in KafkaBackend.variables
    ]
    assert rows == expected
