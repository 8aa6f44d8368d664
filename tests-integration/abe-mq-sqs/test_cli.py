"""The `abe` command on SQS: `abe check`, `abe demo` and `abe bench` (raw aiobotocore beside
abe) succeed, and leave no queue of theirs on the endpoint."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe


def _own_queues(sqs_broker: Any) -> list[str]:
    client = boto3.client(
        "sqs",
        endpoint_url=sqs_broker.endpoint_url,
        region_name=sqs_broker.region,
        aws_access_key_id=sqs_broker.access_key_id,
        aws_secret_access_key=sqs_broker.secret_access_key,
    )
    urls = client.list_queues().get("QueueUrls", [])
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
