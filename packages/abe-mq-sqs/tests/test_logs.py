"""Each backend's SecretFilter: on botocore's loggers while the backend lives, off once closed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, NoRegionError

from abe.errors import BackendUnavailableError, ConfigurationError
from abe.settings import Secret
from abe_mq_sqs import SqsBackend, SqsSettings

CLIENT_LOGGERS = ("botocore", "aiobotocore")

pytestmark = pytest.mark.asyncio

ENDPOINT = "http://127.0.0.1:9/?X-Amz-Signature=endpoint-signature-value&mode=plain"
"""Port 9 (discard): never connected to here; creating a client makes no request."""


def settings(key_id: str, secret_key: str, token: str, **overrides: Any) -> SqsSettings:
    values: dict[str, Any] = {
        "region": "us-east-1",
        "endpoint_url": ENDPOINT,
        "access_key_id": Secret(key_id),
        "secret_access_key": Secret(secret_key),
        "session_token": Secret(token),
    }
    values.update(overrides)
    return SqsSettings(**values)


class Lines(logging.Handler):
    """Every record as a handler would write it: message, traceback and stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def log_request(*values: str) -> None:
    """What botocore.endpoint logs at DEBUG for each request, quoting `values`."""
    logging.getLogger("botocore.endpoint").debug(
        "Sending http request: <AWSPreparedRequest url=%s, headers=%r>",
        values[0],
        {f"h{n}": value.encode() for n, value in enumerate(values[1:])},
    )


async def test_each_backend_hides_its_own_secrets_until_it_closes(lines: Lines) -> None:
    """No module-global set of secrets: a closed backend's filter is off every logger."""
    first = SqsBackend(settings("AKIAFIRSTBACKEND", "first-secret-key", "first-token"))
    second = SqsBackend(settings("AKIASECONDBACKEND", "second-secret-key", "second-token"))
    await first._sqs._client.get()
    await second._sqs._client.get()
    log_request(ENDPOINT, "AKIAFIRSTBACKEND", "first-token", "second-secret-key", "second-token")
    await first.close()
    log_request("after-close", "first-secret-key", "second-token")
    await second.close()

    before_close, after_close = lines.lines[-2:]
    for secret in ("AKIAFIRSTBACKEND", "first-token", "second-secret-key", "second-token"):
        assert secret not in before_close
    assert "endpoint-signature-value" not in before_close
    assert "X-Amz-Signature=***&mode=plain" in before_close
    assert "first-secret-key" in after_close  # the first backend's filter is gone...
    assert "second-token" not in after_close  # ...the second's was still on
    filters = (first.secret_filter, second.secret_filter)
    for name in logging.Logger.manager.loggerDict:
        if name.startswith(CLIENT_LOGGERS):
            installed = logging.getLogger(name).filters
            assert not any(mine in installed for mine in filters), f"left on {name}"


async def test_tracebacks_of_client_records_are_scrubbed(lines: Lines) -> None:
    """botocore logs a failed send with exc_info; the exception quotes the endpoint URL."""
    backend = SqsBackend(settings("AKIATRACEBACK", "traceback-secret", "traceback-token"))
    await backend._sqs._client.get()
    try:
        try:
            raise EndpointConnectionError(endpoint_url=ENDPOINT)
        except EndpointConnectionError:
            logging.getLogger("botocore.endpoint").debug(
                "Exception received when sending HTTP request.", exc_info=True
            )
        try:
            raise RuntimeError("token traceback-token in a traceback")
        except RuntimeError:
            logging.getLogger("aiobotocore.regions").exception("failed")
    finally:
        await backend.close()
    text = lines.text()
    assert "Traceback" in text
    assert "EndpointConnectionError" in text
    for secret in ("endpoint-signature-value", "traceback-token"):
        assert secret not in text


async def test_header_patterns_are_hidden_without_settings_secrets(
    lines: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Credentials botocore's chain finds (here: its own reading of the environment) are in
    no settings: the session token and access key id are hidden by their header patterns."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAINKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "chain-session-token")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    backend = SqsBackend(SqsSettings(region="us-east-1", endpoint_url="http://127.0.0.1:9"))
    await backend._sqs._client.get()
    logging.getLogger("botocore.endpoint").debug(
        "Sending %s",
        {
            "X-Amz-Security-Token": b"chain-session-token",
            "Authorization": b"AWS4-HMAC-SHA256 Credential=AKIACHAINKEY/20240101/us-east-1/sqs",
        },
    )
    logging.getLogger("botocore.auth").debug(
        "CanonicalRequest:\nPOST\n/\n\nx-amz-security-token:chain-session-token\n"
    )
    await backend.close()
    text = lines.text()
    assert "us-east-1/sqs" in text
    for secret in ("chain-session-token", "AKIACHAINKEY"):
        assert secret not in text


async def test_errors_and_their_causes_hide_the_endpoint_secrets() -> None:
    """botocore's connection errors quote the endpoint URL; core chains them as the cause."""
    backend = SqsBackend(settings("AKIAERRORS", "errors-secret", "errors-token"))
    original = EndpointConnectionError(endpoint_url=ENDPOINT)
    translated = backend._translate_error(original)
    assert isinstance(translated, BackendUnavailableError)
    assert "X-Amz-Signature=***" in str(translated)
    for text in (str(translated), repr(translated), str(original), repr(original)):
        assert "endpoint-signature-value" not in text
    config = backend._translate_error(NoRegionError())
    assert isinstance(config, ConfigurationError)
    assert "X-Amz-Signature=***&mode=plain" in str(config)  # where: the endpoint, redacted
    assert "endpoint-signature-value" not in str(config)
    await backend.close()
