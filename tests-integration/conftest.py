"""Shared fixtures for every ``tests-integration/<distribution>/`` folder: brokers for tests.

The implementation lives in the ``abe_brokers`` package beside this file. Pytest runs with
``--import-mode=importlib``, which does not put test directories on ``sys.path``, so this
file adds its own directory before importing it.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from abe_brokers.plugin import (  # noqa: E402
    abe_moto,
    kafka_broker,
    kafka_cluster,
    kafka_server_factory,
    nats_broker,
    nats_cluster,
    nats_server_factory,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_call,
    pytest_terminal_summary,
    rabbitmq_broker,
    rabbitmq_server_factory,
    redis_broker,
    redis_cluster,
    redis_server_factory,
    sqs_broker,
    tls_files,
)

__all__ = [
    "abe_moto",
    "kafka_broker",
    "kafka_cluster",
    "kafka_server_factory",
    "nats_broker",
    "nats_cluster",
    "nats_server_factory",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_terminal_summary",
    "rabbitmq_broker",
    "rabbitmq_server_factory",
    "redis_broker",
    "redis_cluster",
    "redis_server_factory",
    "sqs_broker",
    "tls_files",
]
