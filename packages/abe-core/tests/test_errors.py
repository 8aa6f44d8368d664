"""The one error tree: what each error also is, and what its message carries."""

from __future__ import annotations

import pytest

from abe import errors
from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendClosedError,
    BackendNotFoundError,
    BackendUnavailableError,
    ConfigurationError,
    DeliveryStateError,
    InvalidKeyError,
    PayloadError,
    PublishError,
)


@pytest.mark.parametrize(
    ("error", "also"),
    [
        (ConfigurationError, ValueError),
        (BackendNotFoundError, RuntimeError),
        (PayloadError, ValueError),
        (InvalidKeyError, ValueError),
        (BackendUnavailableError, ConnectionError),
        (AuthenticationError, BackendUnavailableError),
        (AuthenticationError, ConnectionError),
        (BackendClosedError, RuntimeError),
        (DeliveryStateError, RuntimeError),
    ],
)
def test_each_error_is_also_the_builtin_callers_already_catch(
    error: type[Exception], also: type[Exception]
) -> None:
    assert issubclass(error, also)
    assert issubclass(error, AbeError)


def test_every_public_error_is_an_abe_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), AbeError), name
    assert issubclass(AbeError, Exception)
    assert not issubclass(AbeError, (ValueError, RuntimeError, ConnectionError))


def test_publish_error_is_not_a_value_error() -> None:
    # The broker refused part of a batch: the input may be fine, so retrying makes sense.
    assert not issubclass(PublishError, (ValueError, ConnectionError))


def test_errors_that_do_not_share_a_branch_are_distinct() -> None:
    assert not issubclass(PayloadError, InvalidKeyError)
    assert not issubclass(InvalidKeyError, PayloadError)
    assert not issubclass(ConfigurationError, PayloadError)
    assert not issubclass(BackendUnavailableError, AuthenticationError)


def test_configuration_error_names_each_variable() -> None:
    error = ConfigurationError(
        "redis", {"REDIS_URL": "is required but not set", "ABE_MQ_PREFETCH": "must be a number"}
    )
    assert error.backend == "redis"
    assert error.variables == ("REDIS_URL", "ABE_MQ_PREFETCH")
    assert error.problems == {
        "REDIS_URL": "is required but not set",
        "ABE_MQ_PREFETCH": "must be a number",
    }
    assert str(error) == (
        "the redis backend is not configured correctly (2 variables):\n"
        "  REDIS_URL: is required but not set\n"
        "  ABE_MQ_PREFETCH: must be a number"
    )


def test_configuration_error_with_one_variable_says_variable() -> None:
    error = ConfigurationError("nats", {"NATS_URL": "is required but not set"})
    assert "(1 variable):" in str(error)
    assert error.variables == ("NATS_URL",)


def test_configuration_error_keeps_its_own_copy_of_the_problems() -> None:
    problems = {"A": "bad"}
    error = ConfigurationError("x", problems)
    problems["B"] = "worse"
    assert error.variables == ("A",)


def test_publish_error_says_what_failed_and_what_to_do() -> None:
    error = PublishError("orders", {2: "too large", 7: "throttled"}, 10)
    assert error.key == "orders"
    assert error.failed == {2: "too large", 7: "throttled"}
    assert error.total == 10
    message = str(error)
    assert message.startswith("2 of 10 messages to 'orders' were not published")
    assert "#2: too large, #7: throttled" in message
    assert "the others were" in message
    assert "Retry the failed ones" in message


def test_publish_error_shows_the_first_five_failures_and_counts_the_rest() -> None:
    error = PublishError("orders", {index: f"reason {index}" for index in range(8)}, 8)
    message = str(error)
    assert "#4: reason 4" in message
    assert "#5: reason 5" not in message
    assert "and 3 more" in message
    assert len(error.failed) == 8


def test_publish_error_with_five_failures_has_no_more() -> None:
    message = str(PublishError("k", dict.fromkeys(range(5), "x"), 5))
    assert "more" not in message
    assert "#4: x" in message
