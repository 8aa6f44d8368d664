"""The one translation point: every nats-py exception class has an explicit mapping."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import types

import nats.aio.errors
import nats.errors
import nats.js.errors
import pytest

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    InvalidKeyError,
    PayloadError,
)
from abe_mq_nats._errors import ERROR_MAP, is_auth_error, safe_text, translate


def _exception_classes(module: types.ModuleType) -> list[type[BaseException]]:
    return [
        value
        for _, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ == module.__name__
    ]


@pytest.mark.parametrize("module", [nats.errors, nats.js.errors], ids=lambda m: m.__name__)
def test_every_client_exception_has_a_mapping(module: types.ModuleType) -> None:
    missing = [cls.__qualname__ for cls in _exception_classes(module) if cls not in ERROR_MAP]
    assert not missing, f"add these nats-py exceptions to abe_mq_nats._errors.ERROR_MAP: {missing}"


def test_deprecated_aliases_map_through_their_parents() -> None:
    for cls in _exception_classes(nats.aio.errors):
        assert any(parent in ERROR_MAP for parent in cls.__mro__), cls


def _instance(cls: type[BaseException]) -> BaseException:
    if cls is nats.errors.SlowConsumerError:
        return cls("subject", "", 1, None)  # type: ignore[arg-type]
    return cls()


def test_every_mapped_class_translates() -> None:
    for cls, (target, reason) in ERROR_MAP.items():
        error = _instance(cls)
        assert isinstance(error, Exception)
        translated = translate(error, "nats://h:4222")
        if target is None:
            assert translated is error, cls
        else:
            assert isinstance(translated, AbeError), cls
            assert reason or str(translated)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (nats.errors.TimeoutError(), BackendUnavailableError),
        (nats.errors.NoServersError(), BackendUnavailableError),
        (nats.errors.ConnectionClosedError(), BackendUnavailableError),
        (nats.errors.AuthorizationError(), AuthenticationError),
        (nats.errors.Error("nats: 'Authorization Violation'"), AuthenticationError),
        (nats.errors.BadSubjectError(), InvalidKeyError),
        (nats.errors.MaxPayloadError(), PayloadError),
        (nats.errors.BadHeaderError("bad name"), PayloadError),
        (nats.js.errors.NoStreamResponseError(), BackendUnavailableError),
        (nats.js.errors.ServiceUnavailableError(code=503), BackendUnavailableError),
        (
            nats.js.errors.BadRequestError(code=400, err_code=10054, description="too big"),
            PayloadError,
        ),
        (
            nats.js.errors.BadRequestError(
                code=400, err_code=10097, description="header size exceeds maximum allowed of 64k"
            ),
            PayloadError,
        ),
        (nats.js.errors.BadRequestError(code=400, err_code=1, description="no"), AbeError),
        (ConnectionRefusedError(111, "Connect call failed"), BackendUnavailableError),
        (ssl.SSLCertVerificationError("certificate verify failed"), BackendUnavailableError),
        (asyncio.TimeoutError(), BackendUnavailableError),
    ],
)
def test_translations(error: Exception, expected: type[Exception]) -> None:
    translated = translate(error, "nats://h:4222")
    assert isinstance(translated, expected)
    assert "nats://h:4222" in str(translated)


def test_unrelated_errors_pass_through() -> None:
    error = KeyError("x")
    assert translate(error, "") is error
    already = PayloadError("x")
    assert translate(already, "") is already


def test_auth_detection() -> None:
    assert is_auth_error(nats.errors.Error("nats: 'Authorization Violation'"))
    assert is_auth_error(nats.errors.AuthorizationError())
    assert not is_auth_error(nats.errors.Error("nats: 'Authentication Timeout'"))
    assert not is_auth_error(OSError("Authorization Violation"))


def test_safe_text_hides_credentials_in_urls() -> None:
    text = safe_text(OSError("cannot reach nats://user:hunter2@host:4222 or tls://tok@h"))
    assert "hunter2" not in text
    assert "tok@" not in text
    assert "nats://***@host:4222" in text
    assert safe_text(None) == ""
    assert len(safe_text(OSError("x" * 1000))) <= 300
