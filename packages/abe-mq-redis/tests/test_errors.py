"""The error map: every redis-py exception becomes an abe error that says what to do."""

from __future__ import annotations

import asyncio
import inspect
import ssl

import pytest
import redis.exceptions
from redis.asyncio.connection import RedisSSLContext

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
)
from abe.testing import assert_error_map_covers
from abe.testing.error_maps import exception_classes
from abe_mq_redis import RedisBackend, RedisSettings

WHERE = "redis://cache:6379/0"


def _translate(error: Exception, *, tls: bool = False) -> Exception:
    url = WHERE.replace("redis://", "rediss://") if tls else WHERE
    backend = RedisBackend(RedisSettings(url=url, password=None, operation_timeout=2.5))
    return backend._translate_error(error)


def _instance(cls: type[Exception], text: str) -> Exception:
    """An instance whatever the constructor wants (some parse their message)."""
    error = cls.__new__(cls)
    Exception.__init__(error, text)
    if hasattr(redis.exceptions, "ExceptionType"):  # what redis-py 8's __repr__ reads
        error.error_type = redis.exceptions.ExceptionType.SERVER  # type: ignore[attr-defined]
    return error


def _redis_exception_classes() -> list[type[Exception]]:
    return [cls for cls in exception_classes(redis.exceptions) if issubclass(cls, Exception)]


def test_the_error_map_covers_every_redis_exception() -> None:
    assert_error_map_covers(RedisBackend.errors, redis.exceptions, at_least=30)


@pytest.mark.parametrize("cls", _redis_exception_classes(), ids=lambda cls: cls.__name__)
def test_every_redis_exception_becomes_an_abe_error(cls: type[Exception]) -> None:
    translated = _translate(_instance(cls, "something went wrong"))
    assert isinstance(translated, AbeError), f"{cls.__name__} maps to {translated!r}"
    assert WHERE in str(translated)
    assert translated.__cause__ is not None


@pytest.mark.parametrize(
    ("error", "expected", "says"),
    [
        (
            redis.exceptions.AuthenticationError(
                "invalid username-password pair or user is disabled."
            ),
            AuthenticationError,
            "REDIS_PASSWORD",
        ),
        (
            redis.exceptions.NoPermissionError("this user has no permissions to access the key"),
            AuthenticationError,
            "ACL",
        ),
        (
            redis.exceptions.ConnectionError("Error 111 connecting to cache:6379. Refused."),
            BackendUnavailableError,
            "cannot reach the server",
        ),
        (redis.exceptions.TimeoutError("Timeout reading"), BackendUnavailableError, "2.5s"),
        (asyncio.TimeoutError(), BackendUnavailableError, "ABE_MQ_OPERATION_TIMEOUT"),
        (ConnectionRefusedError(111, "refused"), BackendUnavailableError, "cannot reach"),
        (redis.exceptions.BusyLoadingError("loading"), BackendUnavailableError, "loading"),
        (redis.exceptions.ReadOnlyError("replica"), BackendUnavailableError, "primary"),
        (redis.exceptions.OutOfMemoryError("OOM"), BackendUnavailableError, "ABE_REDIS_MAXLEN"),
        (
            redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong"),
            InvalidKeyError,
            "not a stream",
        ),
        (
            redis.exceptions.ResponseError("ERR unknown command 'XAUTOCLAIM'"),
            BackendUnavailableError,
            "Redis 6.2",
        ),
        (
            redis.exceptions.ResponseError("MOVED 3999 127.0.0.1:6381"),
            BackendUnavailableError,
            "Redis Cluster is failing over",
        ),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), BackendUnavailableError, "abe retries"),
        (redis.exceptions.TryAgainError("TRYAGAIN"), BackendUnavailableError, "moving slots"),
        (
            redis.exceptions.MaxConnectionsError("Too many connections"),
            BackendUnavailableError,
            "ABE_REDIS_POOL_SIZE",
        ),
        (
            redis.exceptions.InvalidResponse("Protocol Error: H"),
            BackendUnavailableError,
            "rediss://",
        ),
    ],
)
def test_specific_mappings(error: Exception, expected: type[Exception], says: str) -> None:
    if "MOVED" in str(error):
        error = _instance(redis.exceptions.MovedError, str(error))
    translated = _translate(error)
    assert isinstance(translated, expected)
    assert says in str(translated)
    assert WHERE in str(translated)


def test_a_redirect_with_cluster_mode_off_names_the_setting() -> None:
    backend = RedisBackend(RedisSettings(url=WHERE, cluster="no"))
    translated = backend._translate_error(
        _instance(redis.exceptions.MovedError, "MOVED 3999 127.0.0.1:6381")
    )
    assert isinstance(translated, ConfigurationError)
    assert "ABE_REDIS_CLUSTER" in str(translated)
    assert "auto or yes" in str(translated)


def test_unknown_exceptions_pass_through() -> None:
    error = KeyError("not redis")
    assert _translate(error) is error


def test_abe_errors_pass_through() -> None:
    error = InvalidKeyError("already clear")
    assert _translate(error) is error


def test_certificate_failure_points_at_the_ca_file() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    error = redis.exceptions.ConnectionError("Error 1 connecting to cache:6379.")
    error.__context__ = cause
    translated = _translate(error, tls=True)
    assert isinstance(translated, BackendUnavailableError)
    assert "REDIS_TLS_CA_FILE" in str(translated)


def test_a_certificate_for_another_host_name_is_named_as_such() -> None:
    cause = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, "
        "certificate is not valid for 'cache'.",
    )
    cause.verify_code = 62
    error = redis.exceptions.ConnectionError("Error 1 connecting to cache:6379.")
    error.__cause__ = cause
    translated = _translate(error, tls=True)
    assert isinstance(translated, BackendUnavailableError)
    assert "not for the host name" in str(translated)
    assert "REDIS_URL" in str(translated)
    assert "REDIS_TLS_CA_FILE" in str(translated)


def test_handshake_failure_suggests_plain_or_client_certificate() -> None:
    cause = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error = redis.exceptions.ConnectionError("Error 1 connecting to cache:6379.")
    error.__context__ = cause
    translated = str(_translate(error, tls=True))
    assert "redis://" in translated
    assert "REDIS_TLS_CERT_FILE" in translated


def test_closed_plain_connection_suggests_tls() -> None:
    error = redis.exceptions.ConnectionError("Connection closed by server.")
    assert "rediss://" in str(_translate(error, tls=False))


@pytest.mark.skipif(
    "password" not in inspect.signature(RedisSSLContext).parameters,
    reason="this redis-py has no ssl_password (added in 6.x)",
)
@pytest.mark.asyncio
async def test_errors_never_show_a_secret_query_option() -> None:
    url = "rediss://127.0.0.1:1/0?ssl_password=Opt1on%3BS3cret"  # nothing listens on port 1
    backend = RedisBackend(RedisSettings(url=url, operation_timeout=2.0))
    try:
        with pytest.raises(BackendUnavailableError) as refused:
            await backend.publish("k", {"x": 1})
    finally:
        await backend.close()
    errors = [refused.value]
    errors += [
        backend._translate_error(_instance(cls, "it failed")) for cls in _redis_exception_classes()
    ]
    for error in errors:
        current: BaseException | None = error
        while current is not None:
            for text in (str(current), repr(current)):
                assert "Opt1on" not in text, text
                assert "S3cret" not in text, text
            current = current.__cause__ or current.__context__
