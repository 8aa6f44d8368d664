"""ErrorMap: client exceptions to abe errors along the class hierarchy, with hints, scrubbed."""

from __future__ import annotations

import sys
import types

import pytest

from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadError,
)
from abe.provider import ErrorMap, auth, config, passthrough, payload, unavailable
from abe.testing import assert_error_map_covers


class ClientError(Exception):
    pass


class TooBig(ClientError):
    pass


class Refused(ClientError):
    pass


class Busy(ClientError):
    pass


class Misuse(ClientError):
    pass


class BadPartitions(ClientError):
    pass


ERRORS = ErrorMap(
    "example",
    {
        TooBig: payload("send less"),
        Refused: [
            auth("check EX_PASSWORD", when=lambda error: "password" in str(error)),
            unavailable("the server said no"),
        ],
        Misuse: passthrough(),
        BadPartitions: config("EX_PARTITIONS", "use fewer"),
        ClientError: unavailable("check EX_URL"),
    },
)


def test_each_class_becomes_its_abe_error_with_the_hint_and_the_cause() -> None:
    error = TooBig("TooBig: 2 MB")
    translated = ERRORS.translate(error, "broker:1")
    assert isinstance(translated, PayloadError)
    assert str(translated) == "example (broker:1): TooBig: 2 MB; send less"
    assert translated.__cause__ is error


def test_a_subclass_takes_its_nearest_listed_base() -> None:
    class Later(Busy):
        pass

    translated = ERRORS.translate(Later("queue full"))
    assert isinstance(translated, BackendUnavailableError)
    assert "check EX_URL" in str(translated)


def test_when_picks_among_the_entries_of_one_class() -> None:
    assert isinstance(ERRORS.translate(Refused("wrong password")), AuthenticationError)
    other = ERRORS.translate(Refused("closed"))
    assert type(other) is BackendUnavailableError
    assert "the server said no" in str(other)


def test_passthrough_and_unknown_errors_come_back_unchanged() -> None:
    misuse, unknown = Misuse("bug"), KeyError("x")
    assert ERRORS.translate(misuse) is misuse
    assert ERRORS.translate(unknown) is unknown


def test_a_configuration_error_names_the_variable() -> None:
    translated = ERRORS.translate(BadPartitions("too many"), "b:1")
    assert isinstance(translated, ConfigurationError)
    assert translated.variables == ("EX_PARTITIONS",)
    assert "use fewer" in str(translated)


def test_secrets_are_scrubbed_from_the_clients_text() -> None:
    translated = ERRORS.translate(
        Refused("password hunter22 refused"), scrub=lambda t: t.replace("hunter22", "***")
    )
    assert "hunter22" not in str(translated)


def test_tidy_rewords_the_clients_text_before_it_is_scrubbed() -> None:
    tidied = ErrorMap("example", {ClientError: unavailable("")}, tidy=lambda t: t.upper())
    translated = tidied.translate(Busy("key s3cret busy"), scrub=lambda t: t.replace("S3CRET", "*"))
    assert str(translated) == "example: BUSY: KEY * BUSY"


def test_the_coverage_check_names_what_is_missing() -> None:
    module = types.ModuleType("fake_client")
    sys.modules["fake_client"] = module
    try:

        class Listed(Exception):
            __module__ = "fake_client"

        class Forgotten(Exception):
            __module__ = "fake_client"

        module.Listed, module.Forgotten = Listed, Forgotten  # type: ignore[attr-defined]
        with pytest.raises(AssertionError, match=r"1 exception class.*fake_client.*Forgotten"):
            assert_error_map_covers(ErrorMap("x", {Listed: unavailable("")}), module)
        assert_error_map_covers(
            ErrorMap("x", {Listed: unavailable(""), Forgotten: unavailable("")}), module
        )
    finally:
        del sys.modules["fake_client"]


def test_hints_and_tests_may_depend_on_the_settings() -> None:
    class Settings:
        tls = True
        operation_timeout = 2.5

    errors = ErrorMap(
        "example",
        {
            Busy: [
                unavailable(
                    lambda settings: f"no answer in {settings.operation_timeout:g}s (TLS port?)",
                    when=lambda error, settings: settings.tls,
                ),
                unavailable("no answer"),
            ]
        },
    )
    assert "no answer in 2.5s (TLS port?)" in str(errors.translate(Busy(), settings=Settings()))
    Settings.tls = False
    assert str(errors.translate(Busy(), settings=Settings())).endswith("; no answer")


def test_caused_by_looks_through_the_chain() -> None:
    import ssl

    from abe.provider import TLS_UNTRUSTED, caused_by

    outer = ConnectionError("could not connect")
    outer.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    assert TLS_UNTRUSTED(outer)
    assert caused_by("verify failed")(outer)
    assert not caused_by("nothing like this")(outer)


def test_a_test_with_a_bound_default_is_not_given_the_settings() -> None:
    kinds = {kind: (lambda error, kind=kind: str(error) == kind) for kind in ("busy", "gone")}
    errors = ErrorMap(
        "example",
        {Busy: [unavailable("busy", when=kinds["busy"]), unavailable("gone", when=kinds["gone"])]},
    )
    assert str(errors.translate(Busy("gone"), settings=object())).endswith("; gone")
