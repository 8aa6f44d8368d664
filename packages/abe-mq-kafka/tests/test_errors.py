"""The one error map: every aiokafka exception has a place, and each lands where it should."""

from __future__ import annotations

import inspect

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]
import pytest
from aiokafka.conn import ScramAuthenticator  # type: ignore[import-untyped]

from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)
from abe_mq_kafka import KafkaBackend, KafkaSettings
from abe_mq_kafka._errors import CATEGORIES, category_of, translate

WHERE = "broker-1:9092"


def _aiokafka_exceptions() -> list[type[BaseException]]:
    return [
        value
        for value in vars(kafka_errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__.startswith("aiokafka")
    ]


@pytest.mark.parametrize("error_class", _aiokafka_exceptions(), ids=lambda c: c.__name__)
def test_every_aiokafka_exception_is_mapped(error_class: type[BaseException]) -> None:
    assert error_class in CATEGORIES, (
        f"{error_class.__name__} has no entry in abe_mq_kafka._errors.CATEGORIES: decide "
        f"which abe error it becomes"
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (kafka_errors.MessageSizeTooLargeError(), PayloadError),
        (kafka_errors.RecordBatchTooLargeError(), PayloadError)
        if hasattr(kafka_errors, "RecordBatchTooLargeError")
        else (kafka_errors.RecordListTooLargeError(), PayloadError),
        (kafka_errors.InvalidTopicError(), InvalidKeyError),
        (kafka_errors.SaslAuthenticationFailed("bad"), AuthenticationError),
        (kafka_errors.TopicAuthorizationFailedError(), AuthenticationError),
        (kafka_errors.KafkaConnectionError("Unable to bootstrap"), BackendUnavailableError),
        (kafka_errors.KafkaTimeoutError(), BackendUnavailableError),
        (kafka_errors.NotLeaderForPartitionError(), BackendUnavailableError),
        (kafka_errors.CommitFailedError("rebalanced"), BackendUnavailableError),
        (kafka_errors.InvalidReplicationFactorError(), ConfigurationError),
        (kafka_errors.InvalidSessionTimeoutError(), ConfigurationError),
    ],
    ids=lambda value: type(value).__name__,
)
def test_mapping(error: Exception, expected: type[Exception]) -> None:
    translated = translate(error, WHERE)
    assert isinstance(translated, expected)
    assert str(translated)
    if not isinstance(translated, ConfigurationError):
        assert WHERE in str(translated)


def test_configuration_errors_name_the_variable() -> None:
    translated = translate(kafka_errors.InvalidReplicationFactorError(), WHERE)
    assert isinstance(translated, ConfigurationError)
    assert translated.variables == ("ABE_KAFKA_REPLICATION_FACTOR",)


def test_programming_errors_and_foreign_errors_pass_through() -> None:
    for error in (kafka_errors.IllegalStateError("x"), RuntimeError("x"), KeyError("x")):
        assert translate(error, WHERE) is error


def test_a_subclass_maps_through_its_base() -> None:
    class Newer(kafka_errors.KafkaConnectionError):  # type: ignore[misc]
        pass

    assert category_of(Newer()) == CATEGORIES[kafka_errors.KafkaConnectionError]


def test_a_refused_scram_login_is_an_authentication_error() -> None:
    """aiokafka fails on the broker's SCRAM `e=` answer with KeyError('v'): that is a refusal."""
    authenticator = ScramAuthenticator.__new__(ScramAuthenticator)
    authenticator._server_signature = b"irrelevant"
    try:
        authenticator.process_server_final_message("e=invalid-proof")
    except KeyError as exc:
        translated = translate(exc, WHERE)
    assert isinstance(translated, AuthenticationError)
    assert "SCRAM" in str(translated)


def test_backend_translates_with_its_brokers_and_no_secret() -> None:
    from abe.settings import Secret

    backend = KafkaBackend(
        KafkaSettings(
            bootstrap_servers=("a:1", "b:2"),
            security_protocol="SASL_PLAINTEXT",
            sasl_username="u",
            sasl_password=Secret("hunter2-hunter2"),
        )
    )
    translated = backend._translate_error(kafka_errors.SaslAuthenticationFailed("refused"))
    assert isinstance(translated, AuthenticationError)
    assert "a:1,b:2" in str(translated)
    assert "hunter2" not in str(translated) + repr(backend)
