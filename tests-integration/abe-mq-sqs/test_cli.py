"""The `abe` command on SQS: `abe check`, `abe demo` and `abe bench` (raw aiobotocore beside
abe) succeed, and leave no queue of theirs on the endpoint."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe


def _client(sqs_broker: Any) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=sqs_broker.endpoint_url,
        region_name=sqs_broker.region,
        aws_access_key_id=sqs_broker.access_key_id,
        aws_secret_access_key=sqs_broker.secret_access_key,
    )


def _own_queues(sqs_broker: Any) -> list[str]:
    urls = _client(sqs_broker).list_queues().get("QueueUrls", [])
    return [url for url in urls if url.rsplit("/", 1)[-1].startswith(OWN_KEY_PREFIXES)]


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (("check",), "OK: sqs round trip"),
        (("demo", "--quiet"), "OK: all 39 good orders were packed"),
        (("bench", "--messages", "100"), "aiobotocore"),
    ],
)
def test_abe_command_cleans_up(sqs_broker: Any, arguments: tuple[str, ...], said: str) -> None:
    output = run_abe("sqs", sqs_broker.env(), *arguments)
    assert said in output
    assert _own_queues(sqs_broker) == []


def test_abe_consume_reads_a_queue_and_creates_none(sqs_broker: Any) -> None:
    """`abe consume` finds an existing queue by lookup, and a missing key makes no queue."""
    key = f"abe-cli-consume-{uuid.uuid4().hex[:8]}"
    run_abe("sqs", sqs_broker.env(), "publish", key, '{"n": 1}')
    before = set(_client(sqs_broker).list_queues().get("QueueUrls", []))
    missing = f"abe-cli-missing-{uuid.uuid4().hex[:8]}"
    output = run_abe(
        "sqs", sqs_broker.env(), "consume", key, missing, "--count", "1", "--timeout", "20"
    )
    printed = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert printed == [{"n": 1}]
    assert missing in output  # said that it does not exist
    assert set(_client(sqs_broker).list_queues().get("QueueUrls", [])) == before
