"""moto's S3 conditional writes, as the test brokers run them: atomic, as on S3. And the
answers moto remembers there (the service per host, timestamps as text) are its own.

Tansu (the Kafka broker of the tests) allocates offsets by compare-and-swap on an S3
object. Stock moto checks a PutObject's ``If-None-Match`` and stores the object in two
steps, in a thread per request: two conditional PUTs of one key can both succeed, and
Tansu then gives two produce requests the same offsets (a confirmed record lost in the
crash test). The window is short; here it is widened on purpose, by slowing moto's store
step, so that the race shows every time on stock moto and never with the lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from abe_brokers.atomic_moto import (
    make_put_object_atomic,
    remember_backends_by_host,
    remember_timestamps,
)
from abe_brokers.probes import botocore_client
from abe_brokers.procs import free_port
from moto.core.serialize import TimestampSerializer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

_STORE_DELAY = 0.5  # seconds between moto's precondition check and its write, here


@contextlib.contextmanager
def _moto_in_process() -> Iterator[str]:
    """A moto server in a thread of this process, with the patches in place now; its endpoint."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def slow_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An in-process moto server whose S3 store step takes `_STORE_DELAY`; its endpoint."""
    store = S3Backend.put_object

    def slow_store(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(_STORE_DELAY)  # widens the race window; not a wait for an event
        return store(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_store)
    monkeypatch.setattr(S3Response, "put_object", S3Response.put_object)  # restored after
    with _moto_in_process() as endpoint:
        yield endpoint


def _creates_that_succeed(endpoint: str, writers: int) -> int:
    """How many of `writers` simultaneous ``If-None-Match: *`` PUTs of one new key succeed."""
    clients = [botocore_client("s3", endpoint, region="us-east-1") for _ in range(writers)]
    bucket, key = f"race-{uuid.uuid4().hex[:8]}", "watermark.json"
    clients[0].create_bucket(Bucket=bucket)
    won: list[int] = []
    start = threading.Barrier(writers)

    def create(index: int) -> None:
        start.wait()
        try:
            clients[index].put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
        except clients[index].exceptions.ClientError:
            return  # 412: the precondition held
        won.append(index)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return len(won)


def test_stock_moto_lets_two_creates_of_one_key_succeed(slow_moto: str) -> None:
    assert _creates_that_succeed(slow_moto, 3) > 1


def test_atomic_moto_lets_one_create_of_a_key_succeed(slow_moto: str) -> None:
    make_put_object_atomic()
    assert _creates_that_succeed(slow_moto, 3) == 1


@pytest.fixture
def remembering_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An in-process moto server as the test brokers run it; moto is restored after."""
    for owner, name in [
        (DomainDispatcherApplication, "get_backend_for_host"),
        (TimestampSerializer, "_convert_timestamp_to_str"),
    ]:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    remember_backends_by_host()
    remember_timestamps()
    with _moto_in_process() as endpoint:
        yield endpoint


def test_remembering_moto_answers_s3_and_sqs_as_moto_does(remembering_moto: str) -> None:
    s3 = botocore_client("s3", remembering_moto, region="us-east-1")
    sqs = botocore_client("sqs", remembering_moto, region="us-east-1")
    bucket = f"listed-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for number in range(3):
        s3.put_object(Bucket=bucket, Key=f"records/{number}.batch", Body=b"x")
    stored = {
        f"records/{n}.batch": s3.head_object(Bucket=bucket, Key=f"records/{n}.batch")[
            "LastModified"
        ]
        for n in range(3)
    }
    for _ in range(2):  # the second listing is answered from what the first remembered
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="records/")["Contents"]
        assert {item["Key"]: item["LastModified"] for item in listed} == stored
    queue = sqs.create_queue(QueueName=f"routed-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="to sqs, not s3")
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    assert [message["Body"] for message in received] == ["to sqs, not s3"]
    s3.close()
    sqs.close()
