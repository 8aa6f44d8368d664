"""The one error map: every aiokafka exception has a place, and each lands where it should."""

from __future__ import annotations

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
from abe.settings import Secret
from abe.testing import assert_error_map_covers
from abe_mq_kafka import KafkaBackend, KafkaSettings

WHERE = "broker-1:9092"
BACKEND = KafkaBackend(KafkaSettings(bootstrap_servers=(WHERE,), idempotent=False))


def test_every_aiokafka_exception_is_mapped() -> None:
    assert_error_map_covers(KafkaBackend.errors, kafka_errors, at_least=100)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (kafka_errors.MessageSizeTooLargeError(), PayloadError),
        (kafka_errors.RecordListTooLargeError(), PayloadError),
        (kafka_errors.InvalidTopicError(), InvalidKeyError),
        (kafka_errors.SaslAuthenticationFailed("bad"), AuthenticationError),
        (kafka_errors.TopicAuthorizationFailedError(), AuthenticationError),
        (kafka_errors.KafkaConnectionError("Unable to bootstrap"), BackendUnavailableError),
        (kafka_errors.KafkaTimeoutError(), BackendUnavailableError),
        (kafka_errors.NotLeaderForPartitionError(), BackendUnavailableError),
        (kafka_errors.CommitFailedError("rebalanced"), BackendUnavailableError),
        (kafka_errors.ConsumerStoppedError(), BackendUnavailableError),
        (kafka_errors.InvalidReplicationFactorError(), ConfigurationError),
        (kafka_errors.InvalidSessionTimeoutError(), ConfigurationError),
    ],
    ids=lambda value: type(value).__name__,
)
def test_mapping(error: Exception, expected: type[Exception]) -> None:
    translated = BACKEND._translate_error(error)
    assert isinstance(translated, expected)
    assert translated.__cause__ is error
    assert WHERE in str(translated)


def test_aiokafka_error_codes_are_not_repeated() -> None:
    text = str(BACKEND._translate_error(kafka_errors.NotLeaderForPartitionError()))
    assert text.count("NotLeaderForPartitionError") == 1
    assert "[Error" not in text


def test_configuration_errors_name_the_variable() -> None:
    translated = BACKEND._translate_error(kafka_errors.InvalidReplicationFactorError())
    assert isinstance(translated, ConfigurationError)
    assert translated.variables == ("ABE_KAFKA_REPLICATION_FACTOR",)


def test_programming_errors_and_foreign_errors_pass_through() -> None:
    for error in (kafka_errors.IllegalStateError("x"), RuntimeError("x"), KeyError("x")):
        assert BACKEND._translate_error(error) is error


def test_a_subclass_maps_through_its_base() -> None:
    class Newer(kafka_errors.KafkaConnectionError):  # type: ignore[misc]
        pass

    assert isinstance(BACKEND._translate_error(Newer()), BackendUnavailableError)


def test_a_refused_scram_login_is_an_authentication_error() -> None:
    """aiokafka fails on the broker's SCRAM `e=` answer with KeyError('v'): that is a refusal."""
    authenticator = ScramAuthenticator.__new__(ScramAuthenticator)
    authenticator._server_signature = b"irrelevant"
    try:
        authenticator.process_server_final_message("e=invalid-proof")
    except KeyError as exc:
        translated = BACKEND._translate_error(exc)
    assert isinstance(translated, AuthenticationError)
    assert "SCRAM" in str(translated)


def test_an_unknown_error_names_the_idempotence_setting_only_when_it_is_on() -> None:
    idempotent = KafkaBackend(KafkaSettings(bootstrap_servers=(WHERE,)))
    assert "ABE_KAFKA_IDEMPOTENT=false" in str(
        idempotent._translate_error(kafka_errors.UnknownError())
    )
    assert "IDEMPOTENT" not in str(BACKEND._translate_error(kafka_errors.UnknownError()))


def test_aiokafka_error_codes_are_said_once() -> None:
    error = kafka_errors.UnknownTopicOrPartitionError("no such topic")
    assert "[Error" not in str(BACKEND._translate_error(error))


@pytest.mark.asyncio
async def test_backend_translates_with_its_brokers_and_no_secret() -> None:
    backend = KafkaBackend(
        KafkaSettings(
            bootstrap_servers=("a:1", "b:2"),
            security_protocol="SASL_PLAINTEXT",
            sasl_username="u",
            sasl_password=Secret("hunter2-hunter2"),
        )
    )
    translated = backend._translate_error(
        kafka_errors.SaslAuthenticationFailed("refused hunter2-hunter2")
    )
    assert isinstance(translated, AuthenticationError)
    assert "a:1,b:2" in str(translated)
    assert "hunter2" not in str(translated) + repr(backend)
    # the cause prints in tracebacks: scrubbed in place, down its whole chain
    assert "hunter2" not in repr(translated.__cause__)
    chained = kafka_errors.KafkaConnectionError("lost")
    chained.__cause__ = OSError("login as u with hunter2-hunter2 failed")
    backend._translate_error(chained)
    assert "hunter2" not in repr(chained.__cause__)
    await backend.close()
