"""abe-mq-sqs against the whole contract suite, on the session's SQS endpoint (moto or other).

Skipped by declaration, as on real SQS: fan-out (groups on one queue compete) and
per-key ordering (standard queues order best-effort; FIFO keys are tested in
test_fifo.py). Two things need a word:

- broker_restart: the endpoint is taken away and brought back by cutting a TCP proxy in
  front of it. What an SQS client can meet is an endpoint that stops answering and comes
  back with the messages it had (SQS persists them); a moto process restart loses
  everything, so it cannot stand for that. test_failures.py restarts moto itself too.
- poison_body is adapted (see the method): SQS bodies are Unicode text, so bytes that are
  not UTF-8 cannot be written to SQS at all, and their base64 dead-letter form can never
  occur; everything else the contract asks of poison bodies is checked as written.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from abe_brokers import SqsBroker

from abe.settings import Secret
from abe.testing import (
    BackendContract,
    BackendFactory,
    EnvironmentCase,
    RawWriter,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)
from abe.testing.helpers import unique
from abe_mq_sqs import SqsBackend

OUTAGE = 1.5
"""Seconds the endpoint stays away in broker_restart."""


class TestSqsContract(BackendContract):
    """Every behaviour of CONTRACT.md on SQS."""

    @pytest.fixture
    def backend_factory(self, sqs_settings: Any) -> BackendFactory:
        def build(*, prefetch: int | None = None) -> SqsBackend:
            return SqsBackend(sqs_settings(prefetch=prefetch or 100))

        return build

    @pytest.fixture
    def write_raw(self, sqs_broker: SqsBroker) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            from aiobotocore.session import get_session

            async with get_session().create_client("sqs", **sqs_broker.client_kwargs()) as sqs:
                try:
                    url = (await sqs.get_queue_url(QueueName=key))["QueueUrl"]
                except sqs.exceptions.QueueDoesNotExist:
                    url = (await sqs.create_queue(QueueName=key))["QueueUrl"]
                # SQS carries text only: bytes that are not UTF-8 cannot be sent as they are.
                await sqs.send_message(QueueUrl=url, MessageBody=body.decode("utf-8"))

        return write

    @pytest.fixture
    def invalid_environments(self, tmp_path: Path) -> list[EnvironmentCase]:
        nowhere = {
            "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        }
        config = tmp_path / "config"
        config.write_text("[profile staging]\nregion = eu-west-1\n")
        return [
            EnvironmentCase(
                {
                    **nowhere,
                    "AWS_ACCESS_KEY_ID": "AKIATESTONLY",
                    "ABE_SQS_QUEUE_PREFIX": "bad prefix!",
                    "ABE_SQS_WAIT_TIME_SECONDS": "25",
                },
                (
                    "AWS_REGION",
                    "AWS_SECRET_ACCESS_KEY",
                    "ABE_SQS_QUEUE_PREFIX",
                    "ABE_SQS_WAIT_TIME_SECONDS",
                ),
            ),
            EnvironmentCase(  # no credentials anywhere, and instance metadata switched off
                {**nowhere, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"},
                ("AWS_ACCESS_KEY_ID",),
            ),
            EnvironmentCase(
                {
                    **nowhere,
                    "AWS_DEFAULT_REGION": "us east 1",
                    "AWS_ACCESS_KEY_ID": "AKIATESTONLY",
                    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
                    "AWS_ENDPOINT_URL_SQS": "ftp://127.0.0.1:1",
                    "ABE_SQS_AUTO_CREATE": "maybe",
                    "ABE_SQS_MAX_PAYLOAD_BYTES": "2000000",
                    "ABE_SQS_MAX_ATTEMPTS": "0",
                    "ABE_SQS_CONNECT_TIMEOUT": "never",
                    "ABE_MQ_REDELIVERY_TIMEOUT": "50000",
                },
                (
                    "AWS_DEFAULT_REGION",
                    "AWS_ENDPOINT_URL_SQS",
                    "ABE_SQS_AUTO_CREATE",
                    "ABE_SQS_MAX_PAYLOAD_BYTES",
                    "ABE_SQS_MAX_ATTEMPTS",
                    "ABE_SQS_CONNECT_TIMEOUT",
                    "ABE_MQ_REDELIVERY_TIMEOUT",
                ),
            ),
            EnvironmentCase(
                {
                    "AWS_CONFIG_FILE": str(config),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
                    "AWS_PROFILE": "production",
                },
                ("AWS_PROFILE", "AWS_REGION"),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        return ("has.dot", "orders.FIFO", "orders.fifo.fifo", "a/b", "a:b", "ünï", ".fifo")

    @pytest.fixture
    def restartable_broker(self, sqs_settings: Any, sqs_outage: Any) -> RestartableBroker:
        def build(*, prefetch: int | None = None) -> SqsBackend:
            return SqsBackend(sqs_settings(endpoint_url=sqs_outage.url, prefetch=prefetch or 100))

        async def restart() -> None:
            await asyncio.to_thread(sqs_outage.cut)
            await asyncio.sleep(OUTAGE)  # the outage itself: nothing answers meanwhile
            await asyncio.to_thread(sqs_outage.restore)

        return RestartableBroker(build, restart)

    @pytest.fixture
    def unreachable_backend_factory(
        self, sqs_settings: Any, closed_endpoint: str
    ) -> BackendFactory:
        def build(*, prefetch: int | None = None) -> SqsBackend:
            return SqsBackend(sqs_settings(endpoint_url=closed_endpoint, operation_timeout=5.0))

        return build

    @pytest.fixture
    def tls_mismatch(self, sqs_settings: Any, sqs_broker: SqsBroker) -> TlsMismatch:
        token = f"session-token-{unique('tls')}"

        def backend_at(host: str, port: int) -> SqsBackend:
            endpoint = f"https://{host}:{port}"
            return SqsBackend(
                sqs_settings(
                    endpoint_url=endpoint, session_token=Secret(token), operation_timeout=5.0
                )
            )

        where = urlsplit(sqs_broker.endpoint_url)
        return TlsMismatch(backend_at, (where.hostname or "127.0.0.1", where.port or 80), token)

    @pytest.fixture
    def secret_environment(self, auth_moto_url: str) -> SecretCase:
        token = f"session-token-{unique('secret')}"
        return SecretCase(
            {
                "AWS_ENDPOINT_URL_SQS": auth_moto_url,
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "AKIAABESQSTESTONLY",
                "AWS_SECRET_ACCESS_KEY": "not-the-real-secret-key",
                "AWS_SESSION_TOKEN": token,
                "ABE_MQ_OPERATION_TIMEOUT": "10",
            },
            token,
        )
