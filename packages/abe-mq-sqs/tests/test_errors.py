"""The error map: every botocore exception class and SQS error code has a meaning."""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from typing import Any

import aiohttp
import botocore.exceptions as bce
import pytest

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)
from abe.provider import SecretFilter
from abe.settings import Secret
from abe.testing import assert_error_map_covers
from abe_mq_sqs import SqsBackend, SqsSettings
from abe_mq_sqs._errors import CODE_KINDS, CREDENTIAL_PATTERNS

WHERE = "region=us-east-1 endpoint=aws"
"""What the backend below says of where its endpoint is."""


def translate(error: BaseException) -> BaseException:
    """The error as the backend raises it (its own map, scrubbing and XML reading)."""
    built = SqsBackend(SqsSettings(region="us-east-1"))
    try:
        assert isinstance(error, Exception)
        return built._translate_error(error)
    finally:
        built.secret_filter.uninstall()


def _botocore_classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(bce).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == bce.__name__
    ]


def test_every_botocore_exception_class_is_mapped() -> None:
    """A botocore release that adds an exception class fails here until it is given a meaning."""
    assert_error_map_covers(SqsBackend.errors, bce, at_least=len(_botocore_classes()))


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance of a botocore exception class, whatever keyword arguments it formats."""
    fmt = getattr(cls, "fmt", "")
    fields = dict.fromkeys(_placeholders(fmt), "x")
    if cls is bce.ClientError or issubclass(cls, bce.ClientError):
        return cls({"Error": {"Code": "Weird", "Message": "m"}}, "SendMessage")
    try:
        return cls(**fields)
    except TypeError:  # a class with positional arguments of its own (WaiterError...)
        error = cls.__new__(cls)
        BaseException.__init__(error, "x")
        return error


def _placeholders(fmt: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name]


@pytest.mark.parametrize("cls", _botocore_classes(), ids=lambda cls: cls.__name__)
def test_each_class_translates_to_an_abe_error(cls: type[BaseException]) -> None:
    error = _instance(cls)
    translated = translate(error)
    assert isinstance(translated, AbeError)
    assert str(translated)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (bce.EndpointConnectionError(endpoint_url="http://x"), BackendUnavailableError),
        (bce.ConnectTimeoutError(endpoint_url="http://x"), BackendUnavailableError),
        (bce.ReadTimeoutError(endpoint_url="http://x"), BackendUnavailableError),
        (bce.NoCredentialsError(), AuthenticationError),
        (bce.PartialCredentialsError(provider="env", cred_var="x"), AuthenticationError),
        (bce.NoRegionError(), ConfigurationError),
        (bce.ProfileNotFound(profile="p"), ConfigurationError),
        (bce.ParamValidationError(report="bad"), PayloadError),
        (aiohttp.ServerDisconnectedError(), BackendUnavailableError),
        (ConnectionResetError(), BackendUnavailableError),
    ],
)
def test_library_errors(error: BaseException, expected: type[AbeError]) -> None:
    assert type(translate(error)) is expected


@pytest.mark.asyncio
async def test_a_call_over_the_operation_timeout_says_which_variable_to_raise() -> None:
    """botocore can retry within its own timeouts for longer than abe allows: core bounds
    each call (enforce_operation_timeout) and names the call and ABE_MQ_OPERATION_TIMEOUT."""
    assert SqsBackend.enforce_operation_timeout
    async with SqsBackend(SqsSettings(region="us-east-1", operation_timeout=0.1)) as slow:
        with pytest.raises(BackendUnavailableError) as failed:
            await asyncio.wait_for(slow._guard(asyncio.Event().wait(), "publish"), 5.0)
    assert "publish did not complete within 0.1s" in str(failed.value)
    assert "ABE_MQ_OPERATION_TIMEOUT" in str(failed.value)
    assert WHERE in str(failed.value)


def _client_error(code: str, operation: str = "SendMessage", status: int = 400) -> Any:
    return bce.ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("code", "operation", "status", "expected"),
    [
        ("InvalidClientTokenId", "SendMessage", 403, AuthenticationError),
        ("AccessDenied", "ReceiveMessage", 403, AuthenticationError),
        ("SignatureDoesNotMatch", "SendMessage", 403, AuthenticationError),
        ("ExpiredToken", "SendMessage", 400, AuthenticationError),
        ("RequestThrottled", "SendMessage", 400, BackendUnavailableError),
        ("ServiceUnavailable", "SendMessage", 503, BackendUnavailableError),
        ("OverLimit", "ReceiveMessage", 403, BackendUnavailableError),
        ("QueueDeletedRecently", "CreateQueue", 400, BackendUnavailableError),
        ("AWS.SimpleQueueService.NonExistentQueue", "GetQueueUrl", 400, InvalidKeyError),
        ("QueueDoesNotExist", "SendMessage", 400, InvalidKeyError),
        ("QueueAlreadyExists", "CreateQueue", 400, InvalidKeyError),
        ("InvalidParameterValue", "CreateQueue", 400, InvalidKeyError),
        ("InvalidParameterValue", "SendMessage", 400, PayloadError),
        ("InvalidMessageContents", "SendMessage", 400, PayloadError),
        ("BatchRequestTooLong", "SendMessageBatch", 400, PayloadError),
        ("InvalidParameterValue", "ReceiveMessage", 400, AbeError),
        ("Unheard", "SendMessage", 500, BackendUnavailableError),
        ("Unheard", "SendMessage", 429, BackendUnavailableError),
        ("Unheard", "SendMessage", 403, AuthenticationError),
        ("Unheard", "SendMessage", 400, AbeError),
    ],
)
def test_sqs_error_codes(code: str, operation: str, status: int, expected: type[AbeError]) -> None:
    translated = translate(_client_error(code, operation, status))
    assert type(translated) is expected
    assert code in str(translated)
    assert WHERE in str(translated)


def test_code_map_kinds() -> None:
    assert set(CODE_KINDS.values()) == {"unavailable", "auth", "key", "payload"}


def test_missing_queue_says_how_to_fix_it() -> None:
    translated = translate(_client_error("QueueDoesNotExist"))
    assert "ABE_SQS_AUTO_CREATE" in str(translated)


def test_other_errors_are_left_alone() -> None:
    error = KeyError("not from the client library")
    assert translate(error) is error
    abe = PayloadError("already abe's")
    assert translate(abe) is abe


def test_redaction() -> None:
    """A backend's own secrets go through its SecretFilter; tokens from elsewhere by pattern."""
    known = SecretFilter(["known-secret-value"], patterns=CREDENTIAL_PATTERNS)
    text = (
        "Sending http request: headers={'X-Amz-Security-Token': b'FQoGZXIvYXdz', "
        "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7/20240101/us-east-1/sqs/"
        "aws4_request, SignedHeaders=host, Signature=0123abcd'} known-secret-value\n"
        "x-amz-security-token:FQoGZXIvYXdz\n"
    )
    cleaned = known.scrub(text)
    for secret in ("FQoGZXIvYXdz", "AKIAIOSFODNN7", "0123abcd", "known-secret-value"):
        assert secret not in cleaned
    assert "us-east-1/sqs" in cleaned  # the rest stays readable


def test_botocore_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    settings = SqsSettings(
        region="us-east-1",
        access_key_id=Secret("AKIAKNOWN"),
        secret_access_key=Secret("another-known-secret"),
    )
    backend = SqsBackend(settings)  # its filter is on botocore's loggers from the start
    caplog.set_level(logging.DEBUG)
    try:
        logging.getLogger("botocore.endpoint").debug(
            "Sending %s", {"X-Amz-Security-Token": b"tok-in-header", "x": "another-known-secret"}
        )
        logging.getLogger("botocore.auth").debug("CanonicalRequest:\nx-amz-security-token:tok2\n")
    finally:
        backend.secret_filter.uninstall()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    for message in messages:
        for secret in ("tok-in-header", "another-known-secret", "tok2"):
            assert secret not in message


def test_xml_error_bodies_are_read() -> None:
    """moto answers JSON-protocol requests with XML errors; the code inside decides."""
    error = bce.ClientError(
        {
            "Error": {
                "Code": "403",
                "Message": '<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>'
                "InvalidClientTokenId</Code><Message>The security token included in the "
                "request is invalid.</Message></Error></Errors></ErrorResponse>",
            },
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "GetQueueUrl",
    )
    translated = translate(error)
    assert type(translated) is AuthenticationError
    assert "<" not in str(translated)
    assert "(InvalidClientTokenId) when calling the GetQueueUrl operation" in str(translated)


@pytest.mark.parametrize(
    "error",
    [
        bce.SSLError(
            endpoint_url="https://127.0.0.1:4566/",
            error=ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        ),
        ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify"),
    ],
    ids=["botocore", "ssl"],
)
def test_a_failed_tls_handshake_names_tls_and_the_variable(error: BaseException) -> None:
    """https:// to an endpoint that speaks plain HTTP (or an untrusted certificate) is not
    'check that the endpoint is up': the error says TLS failed and which variable to fix."""
    translated = translate(error)
    assert type(translated) is BackendUnavailableError
    text = str(translated)
    assert "TLS handshake with the endpoint failed" in text
    assert "AWS_ENDPOINT_URL_SQS" in text
    assert "AWS_CA_BUNDLE" in text
    assert "up and reachable" not in text
