"""Reading settings from the environment: every problem collected, one error, no secret shown."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from abe.backends.message_queue.base.settings import (
    BackendSettings,
    SettingsError,
    common_setting,
    setting,
    split_url_credentials,
)
from abe.errors import ConfigurationError
from abe.settings import (
    COMMON_VARIABLES,
    KEYS,
    OPERATION_TIMEOUT,
    PREFETCH,
    REDELIVERY_TIMEOUT,
    Environment,
    Secret,
    Variable,
)

NUMBER = Variable("EX_NUMBER", None, "a number")
DEFAULTED = Variable("EX_DEFAULTED", "7", "a number with a default")
SECONDS = Variable("EX_SECONDS", None, "a duration")
FLAG = Variable("EX_FLAG", None, "a switch")
MODE = Variable("EX_MODE", None, "a mode")
URL = Variable("EX_URL", None, "where the broker is")
FILE = Variable("EX_FILE", None, "a certificate file")
NAME = Variable("EX_NAME", None, "a name")

SECRET_VALUE = "hunter2-s3cr3t"


def env(**values: str) -> Environment:
    return Environment({f"EX_{name.upper()}": value for name, value in values.items()})


# ---- collecting problems ---------------------------------------------------------------------


def test_check_raises_one_error_naming_every_bad_variable_in_order() -> None:
    reader = env(number="lots", seconds="-1", flag="maybe")
    reader.integer(NUMBER)
    reader.seconds(SECONDS, minimum=0)
    reader.boolean(FLAG)
    reader.string(NAME, required=True)
    with pytest.raises(ConfigurationError) as refused:
        reader.check("example")
    error = refused.value
    assert error.variables == ("EX_NUMBER", "EX_SECONDS", "EX_FLAG", "EX_NAME")
    assert error.backend == "example"
    message = str(error)
    assert message.startswith("the example backend is not configured correctly (4 variables):")
    for name in error.variables:
        assert f"\n  {name}: " in message
    assert "EX_NAME: is required but not set" in message


def test_check_passes_when_nothing_is_wrong() -> None:
    reader = env(number="3", flag="yes")
    assert reader.integer(NUMBER) == 3
    assert reader.boolean(FLAG) is True
    reader.check("example")
    assert reader.problems == {}


def test_the_first_problem_recorded_for_a_variable_wins() -> None:
    reader = env()
    reader.problem(NUMBER, "first")
    reader.problem("EX_NUMBER", "second")
    assert reader.problems == {"EX_NUMBER": "first"}


def test_raw_strips_spaces_and_falls_back_to_the_default() -> None:
    assert env(defaulted="  12 ").raw(DEFAULTED) == "12"
    assert env(defaulted="   ").raw(DEFAULTED) == "7"
    assert env().raw(DEFAULTED) == "7"
    assert env().raw(NUMBER) is None
    assert env(number=" ").is_set(NUMBER) is False
    assert env(number="1").is_set(NUMBER) is True


def test_unset_values_without_a_default_are_none_and_not_problems() -> None:
    reader = env()
    assert reader.integer(NUMBER) is None
    assert reader.seconds(SECONDS) is None
    assert reader.boolean(FLAG) is None
    assert reader.choice(MODE, ["a"]) is None
    assert reader.url(URL, schemes=["redis"]) is None
    assert reader.path(FILE) is None
    assert reader.string(NAME) is None
    assert reader.problems == {}


def test_the_default_is_parsed_like_a_value() -> None:
    assert env().integer(DEFAULTED) == 7


def test_environment_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EX_NUMBER", "41")
    assert Environment().integer(NUMBER) == 41


# ---- integers and seconds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minimum", "maximum", "expected", "problem"),
    [
        ("5", 1, 10, 5, None),
        ("1", 1, 10, 1, None),
        ("10", 1, 10, 10, None),
        ("0", 1, 10, None, "must be a whole number from 1 to 10 (got '0')"),
        ("11", 1, 10, None, "must be a whole number from 1 to 10 (got '11')"),
        ("0", 1, None, None, "must be a whole number of at least 1 (got '0')"),
        ("99", None, 50, None, "must be a whole number of at most 50 (got '99')"),
        ("lots", None, None, None, "must be a whole number (got 'lots')"),
        ("1.5", 1, 10, None, "must be a whole number from 1 to 10 (got '1.5')"),
    ],
)
def test_integer_bounds(
    text: str, minimum: int | None, maximum: int | None, expected: int | None, problem: str | None
) -> None:
    reader = env(number=text)
    assert reader.integer(NUMBER, minimum=minimum, maximum=maximum) == expected
    assert reader.problems.get("EX_NUMBER") == problem


@pytest.mark.parametrize(
    ("text", "expected", "problem"),
    [
        ("2.5", 2.5, None),
        ("0.1", 0.1, None),
        ("60", 60.0, None),
        ("0.05", None, "must be a number of seconds from 0.1 to 60 (got '0.05')"),
        ("61", None, "must be a number of seconds from 0.1 to 60 (got '61.0')"),
        ("soon", None, "must be a number of seconds from 0.1 to 60 (got 'soon')"),
        ("nan", None, "must be a number of seconds from 0.1 to 60 (got 'nan')"),
        ("inf", None, "must be a number of seconds from 0.1 to 60 (got 'inf')"),
    ],
)
def test_seconds_bounds(text: str, expected: float | None, problem: str | None) -> None:
    reader = env(seconds=text)
    assert reader.seconds(SECONDS, minimum=0.1, maximum=60) == expected
    assert reader.problems.get("EX_SECONDS") == problem


def test_seconds_without_bounds_still_refuse_infinity() -> None:
    reader = env(seconds="-inf")
    assert reader.seconds(SECONDS) is None
    assert "EX_SECONDS" in reader.problems


def test_a_large_integer_bound_is_shown_exactly() -> None:
    reader = env(number="99999999999")
    reader.integer(NUMBER, minimum=1, maximum=1 << 30)
    assert "1073741824" in reader.problems["EX_NUMBER"]


# ---- booleans and choices --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *((spelling, True) for spelling in ("1", "true", "TRUE", "True", "yes", "Yes", "on", "ON")),
        *((spelling, False) for spelling in ("0", "false", "False", "no", "NO", "off", "Off")),
    ],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    reader = env(flag=text)
    assert reader.boolean(FLAG) is expected
    assert reader.problems == {}


@pytest.mark.parametrize("text", ["maybe", "2", "y", "enabled"])
def test_other_boolean_spellings_are_problems(text: str) -> None:
    reader = env(flag=text)
    assert reader.boolean(FLAG) is None
    assert reader.problems == {"EX_FLAG": f"must be true or false (got {text!r})"}


def test_choice_ignores_case_and_returns_the_declared_spelling() -> None:
    reader = env(mode="PLAIN")
    assert reader.choice(MODE, ["SCRAM-SHA-256", "plain"]) == "plain"
    assert reader.problems == {}


def test_a_bad_choice_lists_the_choices() -> None:
    reader = env(mode="gssapi")
    assert reader.choice(MODE, ["plain", "scram"]) is None
    assert reader.problems == {"EX_MODE": "must be one of plain, scram (got 'gssapi')"}


# ---- URLs ------------------------------------------------------------------------------------


def test_a_url_with_an_accepted_scheme_is_returned_as_given() -> None:
    reader = env(url="rediss://cache:6380/0")
    assert reader.url(URL, schemes=["redis", "rediss"]) == "rediss://cache:6380/0"
    assert reader.problems == {}


def test_a_url_with_another_scheme_names_the_accepted_ones() -> None:
    reader = env(url="http://cache:6379")
    assert reader.url(URL, schemes=["redis", "rediss"]) is None
    assert reader.problems == {
        "EX_URL": "must start with redis://, rediss:// (got 'http://cache:6379')"
    }


def test_a_url_with_a_port_that_is_not_a_number_is_a_problem() -> None:
    reader = env(url="redis://cache:port")
    assert reader.url(URL, schemes=["redis"]) is None
    assert reader.problems["EX_URL"].startswith("is not a valid URL")


def test_several_comma_separated_urls_are_each_checked() -> None:
    good = "nats://a:4222, nats://b:4222,nats://c:4222"
    reader = env(url=good)
    assert reader.url(URL, schemes=["nats", "tls"]) == good
    assert reader.problems == {}

    reader = env(url="nats://a:4222,http://b:4222")
    assert reader.url(URL, schemes=["nats"]) is None
    assert reader.problems == {"EX_URL": "must start with nats:// (got 'http://b:4222')"}


def test_a_required_url_that_is_missing_is_a_problem() -> None:
    reader = env()
    assert reader.url(URL, schemes=["redis"], required=True) is None
    assert reader.problems == {"EX_URL": "is required but not set"}


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET_VALUE}@cache:6379/0",
        f"http://:{SECRET_VALUE}@cache:6379",
        f"redis://user:{SECRET_VALUE}@cache:notaport",
        f"redis://a:1,http://user:{SECRET_VALUE}@b:2",
    ],
)
def test_a_password_in_a_url_is_shown_as_stars(url: str) -> None:
    reader = env(url=url)
    reader.url(URL, schemes=["redis"])
    problem = reader.problems["EX_URL"]
    assert SECRET_VALUE not in problem
    assert "***@" in problem
    assert "user" not in problem  # the user part can be a token, so it is hidden too


def test_a_token_given_as_the_user_part_of_a_url_is_not_shown() -> None:
    reader = env(url=f"nat://{SECRET_VALUE}@localhost:4222")
    reader.url(URL, schemes=["nats"])
    assert SECRET_VALUE not in reader.problems["EX_URL"]


# ---- secrets ---------------------------------------------------------------------------------


SECRET_NUMBER = Variable("EX_NUMBER", None, "a secret number", secret=True)
SECRET_COUNT = Variable("EX_COUNT", None, "a secret number in range", secret=True)
SECRET_SECONDS = Variable("EX_SECONDS", None, "a secret duration", secret=True)
SECRET_FLAG = Variable("EX_FLAG", None, "a secret switch", secret=True)
SECRET_MODE = Variable("EX_MODE", None, "a secret mode", secret=True)
SECRET_URL = Variable("EX_URL", None, "a URL with credentials", secret=True)
SECRET_FILE = Variable("EX_FILE", None, "a secret file name", secret=True)
SECRET_NUMBER_VALUE = "12345678"


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda reader: reader.integer(SECRET_NUMBER), id="integer"),
        pytest.param(lambda reader: reader.integer(SECRET_COUNT, maximum=10), id="integer-bounds"),
        pytest.param(lambda reader: reader.seconds(SECRET_SECONDS), id="seconds"),
        pytest.param(lambda reader: reader.seconds(SECRET_COUNT, maximum=10), id="seconds-bounds"),
        pytest.param(lambda reader: reader.boolean(SECRET_FLAG), id="boolean"),
        pytest.param(lambda reader: reader.choice(SECRET_MODE, ["a", "b"]), id="choice"),
        pytest.param(lambda reader: reader.url(SECRET_URL, schemes=["redis"]), id="url"),
        pytest.param(
            lambda reader: reader.path(SECRET_FILE),
            id="path",
        ),
    ],
)
def test_a_secret_variables_value_never_appears_in_a_problem(
    read: Callable[[Environment], object],
) -> None:
    reader = Environment(
        {
            "EX_NUMBER": SECRET_VALUE,
            "EX_COUNT": SECRET_NUMBER_VALUE,
            "EX_SECONDS": SECRET_VALUE,
            "EX_FLAG": SECRET_VALUE,
            "EX_MODE": SECRET_VALUE,
            "EX_URL": f"http://{SECRET_VALUE}:{SECRET_VALUE}@x:y/{SECRET_VALUE}",
            "EX_FILE": f"/nonexistent/{SECRET_VALUE}",
        }
    )
    read(reader)
    assert len(reader.problems) == 1, "the reader did not refuse the value"
    with pytest.raises(ConfigurationError) as refused:
        reader.check("example")
    for shown in (str(refused.value), repr(refused.value), *reader.problems.values()):
        assert SECRET_VALUE not in shown
        assert SECRET_NUMBER_VALUE not in shown


def test_secret_reader_returns_a_masked_secret_and_never_records_a_problem() -> None:
    token = Variable("EX_TOKEN", None, "a token", secret=True)
    reader = Environment({"EX_TOKEN": SECRET_VALUE})
    secret = reader.secret(token)
    assert secret is not None
    assert secret.reveal() == SECRET_VALUE
    assert Environment({}).secret(token) is None
    assert Environment({"EX_TOKEN": ""}).secret(token) is None
    assert reader.problems == {}


def test_secret_is_masked_in_repr_and_str_and_revealed_on_request() -> None:
    secret = Secret(SECRET_VALUE)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert SECRET_VALUE not in shown
        assert "***" in shown
    assert secret.reveal() == SECRET_VALUE


def test_secret_compares_by_value_and_is_false_when_empty() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert bool(Secret("a")) is True
    assert bool(Secret("")) is False


def test_secret_is_masked_inside_settings_reprs() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithPassword(BackendSettings):
        password: Secret

    settings = WithPassword(password=Secret(SECRET_VALUE))
    assert SECRET_VALUE not in repr(settings)
    assert SECRET_VALUE not in repr(settings.describe())
    assert settings.describe()["password"] == Secret(SECRET_VALUE)


def test_secret_has_no_instance_dict_to_leak_through() -> None:
    secret = Secret(SECRET_VALUE)
    assert not hasattr(secret, "__dict__")


# ---- files -----------------------------------------------------------------------------------


def test_path_of_a_readable_file(tmp_path: Path) -> None:
    certificate = tmp_path / "ca.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----")
    reader = env(file=str(certificate))
    assert reader.path(FILE) == certificate
    assert reader.problems == {}


def test_path_expands_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_text("x")
    assert env(file="~/ca.pem").path(FILE) == tmp_path / "ca.pem"


@pytest.mark.parametrize("name", ["missing.pem", "."])
def test_path_of_a_missing_file_is_a_problem(tmp_path: Path, name: str) -> None:
    text = str(tmp_path / name)
    reader = env(file=text)
    assert reader.path(FILE) is None
    assert reader.problems == {"EX_FILE": f"must name a readable file that exists (got {text!r})"}


def test_path_of_an_unreadable_file_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "key.pem"
    locked.write_text("x")
    real_access = os.access
    # chmod does not stop root, so make the permission check itself say no.
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == locked else real_access(path, mode)
    )
    reader = env(file=str(locked))
    assert reader.path(FILE) is None
    assert reader.problems == {
        "EX_FILE": f"must name a file this process can read (got {str(locked)!r})"
    }


# ---- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", ("orders",)),
        (" orders , payments,,", ("orders", "payments")),
        (" , ,", None),
        ("", None),
    ],
)
def test_keys_reads_comma_separated_abe_mq_keys(
    text: str, expected: tuple[str, ...] | None
) -> None:
    assert Environment({"ABE_MQ_KEYS": text}).keys() == expected


def test_keys_is_none_when_unset() -> None:
    assert Environment({}).keys() is None


# ---- the settings every backend has ----------------------------------------------------------


def test_common_variables_are_declared_once() -> None:
    assert COMMON_VARIABLES == (KEYS, PREFETCH, REDELIVERY_TIMEOUT, OPERATION_TIMEOUT)
    assert [variable.name for variable in COMMON_VARIABLES] == [
        "ABE_MQ_KEYS",
        "ABE_MQ_PREFETCH",
        "ABE_MQ_REDELIVERY_TIMEOUT",
        "ABE_MQ_OPERATION_TIMEOUT",
    ]
    assert all(variable.meaning for variable in COMMON_VARIABLES)
    assert not any(variable.secret for variable in COMMON_VARIABLES)


def test_the_common_settings_are_declared_once_and_listed_as_variables() -> None:
    declared = BackendSettings.variables()
    assert declared == (PREFETCH, REDELIVERY_TIMEOUT, OPERATION_TIMEOUT)
    assert [variable.default for variable in declared] == ["100", "30", "10"]


def test_from_env_gives_the_defaults_when_nothing_is_set() -> None:
    assert BackendSettings.from_env({}) == BackendSettings()


def test_from_env_reads_the_environment() -> None:
    settings = BackendSettings.from_env(
        {
            "ABE_MQ_PREFETCH": "5",
            "ABE_MQ_REDELIVERY_TIMEOUT": "2.5",
            "ABE_MQ_OPERATION_TIMEOUT": " 0.5 ",
        }
    )
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        5,
        2.5,
        0.5,
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ABE_MQ_PREFETCH", "0"),
        ("ABE_MQ_PREFETCH", "100001"),
        ("ABE_MQ_PREFETCH", "many"),
        ("ABE_MQ_REDELIVERY_TIMEOUT", "0.005"),
        ("ABE_MQ_REDELIVERY_TIMEOUT", "43201"),
        ("ABE_MQ_OPERATION_TIMEOUT", "0"),
        ("ABE_MQ_OPERATION_TIMEOUT", "3601"),
        ("ABE_MQ_OPERATION_TIMEOUT", "nan"),
    ],
)
def test_from_env_refuses_out_of_range_values(name: str, text: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        BackendSettings.from_env({name: text})
    assert refused.value.variables == (name,)


def test_from_env_names_every_bad_variable_at_once() -> None:
    with pytest.raises(ConfigurationError) as refused:
        BackendSettings.from_env(
            {
                "ABE_MQ_PREFETCH": "lots",
                "ABE_MQ_REDELIVERY_TIMEOUT": "soon",
                "ABE_MQ_OPERATION_TIMEOUT": "-1",
            }
        )
    assert refused.value.variables == (
        "ABE_MQ_PREFETCH",
        "ABE_MQ_REDELIVERY_TIMEOUT",
        "ABE_MQ_OPERATION_TIMEOUT",
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prefetch", 0, "prefetch must be a number from 1 to 100000, got 0"),
        ("prefetch", -5, "prefetch must be a number from 1 to 100000, got -5"),
        ("redelivery_timeout", 0, "redelivery_timeout must be a number from 0.01 to 43200"),
        ("operation_timeout", -1.0, "operation_timeout must be a number from 0.1 to 3600"),
        ("poll_interval", 0.0, "poll_interval must be a number from 0.001 to 3600"),
    ],
)
def test_backend_settings_validate_themselves(field: str, value: float, message: str) -> None:
    arguments: dict[str, Any] = {field: value}
    with pytest.raises(SettingsError, match=message) as refused:
        BackendSettings(**arguments)
    assert list(refused.value.problems) == [field]


def test_backend_settings_are_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        BackendSettings(5)  # type: ignore[call-arg]
    settings = BackendSettings(prefetch=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.prefetch = 6  # type: ignore[misc]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _OwnPrefetch(BackendSettings):
    prefetch: int = common_setting("prefetch", 500, "the broker's own batch")


def test_a_common_setting_with_a_providers_own_default_keeps_its_variable_and_limits() -> None:
    assert _OwnPrefetch().prefetch == 500
    assert _OwnPrefetch.from_env({"ABE_MQ_PREFETCH": "7"}).prefetch == 7
    with pytest.raises(ConfigurationError, match="ABE_MQ_PREFETCH"):
        _OwnPrefetch.from_env({"ABE_MQ_PREFETCH": "0"})
    with pytest.raises(SettingsError, match="from 1 to 100000"):
        _OwnPrefetch(prefetch=100_001)
    (declared,) = [v for v in _OwnPrefetch.variables() if v.name == "ABE_MQ_PREFETCH"]
    assert declared.default == "500"
    assert declared.meaning == (
        "Most messages a consumer holds unacknowledged at once (the broker's own batch)."
    )


def test_backend_settings_describe_lists_every_field() -> None:
    assert BackendSettings(prefetch=3).describe() == {
        "prefetch": 3,
        "redelivery_timeout": 30.0,
        "operation_timeout": 10.0,
        "poll_interval": 1.0,
    }


@pytest.mark.parametrize("field", ["redelivery_timeout", "operation_timeout", "poll_interval"])
def test_backend_settings_refuse_nan(field: str) -> None:
    arguments: dict[str, Any] = {field: float("nan")}
    with pytest.raises(ValueError, match=field):
        BackendSettings(**arguments)


# ---- a provider's declared settings ---------------------------------------------------------


def _port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("must be host:port, e.g. broker:9092")
    return host, int(port)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Declared(BackendSettings):
    address: tuple[str, int] = setting("EX_ADDRESS", ("localhost", 1), "host:port.", parse=_port)
    servers: tuple[str, ...] = setting("EX_SERVERS", ("a", "b"), "Servers.")
    mode: str = setting("EX_MODE", "fast", "Mode.", choices=("fast", "safe"))
    password: Secret | None = setting("EX_PASSWORD", None, "Password.", secret=True)
    ca_file: Path | None = setting("EX_CA_FILE", None, "CA file.")
    cert_file: Path | None = setting("EX_CERT_FILE", None, "Certificate.")
    retries: int = setting("EX_RETRIES", 3, "Retries.", minimum=0, maximum=10)
    wait: float = setting("EX_WAIT", 0.5, "Seconds.", minimum=0.0)
    verbose: bool = setting("EX_VERBOSE", False, "Verbose.")
    poll_interval: float = setting("EX_BLOCK", 2.0, "Block.", minimum=0.01, maximum=60)

    backend_name: ClassVar[str] = "example"

    def check(self) -> Iterator[tuple[str, str]]:
        if self.cert_file is not None and self.ca_file is None:
            yield "ca_file", "is required when EX_CERT_FILE is set"


def test_declared_settings_list_their_variables_own_first_with_defaults_as_text() -> None:
    variables = _Declared.variables()
    assert [variable.name for variable in variables] == [
        "EX_ADDRESS",
        "EX_SERVERS",
        "EX_MODE",
        "EX_PASSWORD",
        "EX_CA_FILE",
        "EX_CERT_FILE",
        "EX_RETRIES",
        "EX_WAIT",
        "EX_VERBOSE",
        "EX_BLOCK",
        "ABE_MQ_PREFETCH",
        "ABE_MQ_REDELIVERY_TIMEOUT",
        "ABE_MQ_OPERATION_TIMEOUT",
    ]
    defaults = {variable.name: variable.default for variable in variables}
    assert defaults["EX_SERVERS"] == "a,b"
    assert defaults["EX_PASSWORD"] is None
    assert defaults["EX_VERBOSE"] == "false"
    assert defaults["EX_BLOCK"] == "2"
    assert [variable.name for variable in variables if variable.secret] == ["EX_PASSWORD"]


def test_declared_settings_read_each_type(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = _Declared.from_env(
        {
            "EX_ADDRESS": "broker:9092",
            "EX_SERVERS": " x , y ,",
            "EX_MODE": "SAFE",
            "EX_PASSWORD": "hunter22",
            "EX_CA_FILE": str(ca),
            "EX_RETRIES": "7",
            "EX_WAIT": "0",
            "EX_VERBOSE": "yes",
            "EX_BLOCK": "0.25",
        }
    )
    assert settings.address == ("broker", 9092)
    assert settings.servers == ("x", "y")
    assert settings.mode == "safe"
    assert settings.password == Secret("hunter22")
    assert settings.secrets() == ("hunter22",)
    assert settings.ca_file == ca
    assert (settings.retries, settings.wait, settings.verbose, settings.poll_interval) == (
        7,
        0.0,
        True,
        0.25,
    )


def test_declared_settings_gather_every_problem_rules_included_and_never_echo_a_secret(
    tmp_path: Path,
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigurationError) as refused:
        _Declared.from_env(
            {
                "EX_ADDRESS": "no-port",
                "EX_MODE": "turbo",
                "EX_RETRIES": "11",
                "EX_VERBOSE": "perhaps",
                "EX_CERT_FILE": str(cert),
                "EX_PASSWORD": "hunter22",
                "EX_BLOCK": "0",
            }
        )
    problems = refused.value.problems
    assert list(problems) == [
        "EX_ADDRESS",
        "EX_MODE",
        "EX_RETRIES",
        "EX_VERBOSE",
        "EX_BLOCK",
        "EX_CA_FILE",
    ]
    assert problems["EX_ADDRESS"] == "must be host:port, e.g. broker:9092 (got 'no-port')"
    assert "fast, safe" in problems["EX_MODE"]
    assert problems["EX_CA_FILE"] == "is required when EX_CERT_FILE is set"
    assert refused.value.backend == "example"
    assert "hunter22" not in str(refused.value)


def test_hand_built_settings_meet_the_same_limits_and_rules(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        _Declared(retries=11, mode="turbo", cert_file=tmp_path)
    assert list(refused.value.problems) == ["mode", "retries", "ca_file", "cert_file"]
    assert refused.value.problems["cert_file"] == (
        f"must name a readable file that exists (got {str(tmp_path)!r})"  # a folder
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Paired(BackendSettings):
    cert: Path | None = setting("EX_CERT", None, "Certificate.", pair="key")
    key: Path | None = setting("EX_KEY", None, "Its private key.")


@pytest.mark.parametrize(("given", "blamed"), [("EX_CERT", "EX_KEY"), ("EX_KEY", "EX_CERT")])
def test_half_of_a_declared_pair_is_refused_naming_the_missing_half(
    tmp_path: Path, given: str, blamed: str
) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(ConfigurationError) as refused:
        _Paired.from_env({given: str(pem)})
    assert refused.value.problems == {blamed: f"is required when {given} is set (they go together)"}
    both = _Paired.from_env({"EX_CERT": str(pem), "EX_KEY": str(pem)})
    assert (both.cert, both.key) == (pem, pem)


def test_a_missing_file_and_the_missing_half_of_its_pair_are_named_at_once(tmp_path: Path) -> None:
    """A file is checked with the other rules, not on reading, so one error names both."""
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError) as refused:
        _Paired.from_env({"EX_CERT": missing})
    assert refused.value.problems == {
        "EX_KEY": "is required when EX_CERT is set (they go together)",
        "EX_CERT": f"must name a readable file that exists (got {missing!r})",
    }
    with pytest.raises(SettingsError, match=r"^key is required when EX_CERT is set"):
        _Paired(cert=Path(missing))  # in code too


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:pa/ss?w#rd@cache:6379/0",  # a password with characters a URL parser splits at
        "redis://:p@ss@cache:6379",
        "nats://t0ken@a:4222,nats://t0ken@b:4222",
    ],
)
def test_passwords_with_url_characters_are_never_shown(url: str) -> None:
    from abe.settings import redact_url

    shown = redact_url(url)
    for secret in ("pa/ss", "w#rd", "p@ss", "t0ken", "user"):
        assert secret not in shown
    assert "***@" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "rediss://cache:6380/0?ssl_password=S3cret&db=2",
            "rediss://cache:6380/0?ssl_password=***&db=2",
        ),
        ("redis://cache?password=S3cret", "redis://cache?password=***"),
        ("nats://a:4222?auth_token=S3;cret&x=1", "nats://a:4222?auth_token=***&x=1"),
        ("rediss://h/0?ssl%5Fpassword=S3cret", "rediss://h/0?ssl%5Fpassword=***"),
        ("https://sqs.local?X-Amz-Signature=S3cret", "https://sqs.local?X-Amz-Signature=***"),
        (
            "amqp://u:S3cret@rabbit:5672/vhost?heartbeat=5",
            "amqp://***@rabbit:5672/vhost?heartbeat=5",
        ),
        ("redis://cache:6379/0?ssl_keyfile=/k.pem", "redis://cache:6379/0?ssl_keyfile=/k.pem"),
        ("nats://a:4222,nats://b:4222", "nats://a:4222,nats://b:4222"),
    ],
)
def test_redact_url_hides_secret_query_options_and_keeps_the_rest(url: str, shown: str) -> None:
    from abe.redaction import redact_url

    assert redact_url(url) == shown


def test_the_secret_filter_hides_every_form_of_a_secret_in_messages_and_tracebacks() -> None:
    import logging

    from abe.redaction import SecretFilter

    secret = "pa ss/wörd'\\"
    secret_filter = SecretFilter([secret, "", "ab"])
    logger = logging.getLogger("abe-test-client.conn")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    parent = logging.getLogger("abe-test-client")
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    secret_filter.install("abe-test-client")
    try:
        logger.debug(
            "SaslAuthenticateRequest(sasl_auth_bytes=%r)", b"user\x00user\x00" + secret.encode()
        )
        logger.debug("plain %s, quoted %s, repr %r", secret, "pa%20ss%2Fw%C3%B6rd%27%5C", secret)
        try:
            raise ConnectionError(f"refused {secret}")
        except ConnectionError:
            logger.exception("failed")
        logger.debug("ab is too short to hide")
    finally:
        secret_filter.uninstall()
        parent.removeHandler(handler)
    formatter = logging.Formatter()
    text = "\n".join(formatter.format(record) for record in records)
    for form in ("ss/w", "w\\xc3\\xb6rd", "pa%20ss"):
        assert form not in text
    assert text.count("***") >= 5
    assert "ab is too short to hide" in text
    assert secret_filter not in logger.filters


def test_url_secrets_are_what_redact_url_hides() -> None:
    from abe.redaction import url_secrets

    assert url_secrets("redis://u:pw@h:1/0?ssl_password=sp&db=1,nats://tok@n:4222") == (
        "u",
        "pw",
        "sp",
        "tok",
    )
    assert url_secrets("https://sqs.local:443") == ()
    # as written, and as the client library decodes it
    assert url_secrets("redis://:p%40ss+w@h?ssl_password=a%3Bb") == (
        "p%40ss+w",
        "a%3Bb",
        "p@ss+w",
        "p@ss w",
        "a;b",
    )


def test_the_secret_filter_hides_what_its_patterns_find() -> None:
    import re

    from abe.redaction import SecretFilter

    found = SecretFilter([], [re.compile(r"Credential=(AKIA[A-Z0-9]+)"), re.compile(r"tok-\d+")])
    assert found.active
    assert found.scrub("Credential=AKIA123/x tok-42 ok") == "Credential=***/x *** ok"


def test_the_secret_filter_scrubs_an_exception_and_its_causes_in_place() -> None:
    from abe.redaction import SecretFilter

    inner = ConnectionError("login as admin:s3cr3t-pw refused", 7)
    outer = RuntimeError("connect failed (s3cr3t-pw)")
    outer.__cause__ = inner
    SecretFilter(["s3cr3t-pw"]).scrub_chain(outer)
    assert outer.args == ("connect failed (***)",)
    assert inner.args == ("login as admin:*** refused", 7)


def test_a_url_setting_shows_without_its_credentials_and_counts_them_as_secrets() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithUrl(BackendSettings):
        url: str = setting("EX_URL", "ex://localhost", "Where.", url=True)

    settings = WithUrl.from_env({"EX_URL": "ex://user:pa55w0rd@host:1/x?auth_token=t0k3n&db=1"})
    assert (
        settings.url == "ex://user:pa55w0rd@host:1/x?auth_token=t0k3n&db=1"
    )  # whole, for the client
    for shown in (repr(settings), str(settings.describe())):
        assert "pa55w0rd" not in shown
        assert "t0k3n" not in shown
        assert "host:1" in shown
    assert set(settings.secrets()) == {"user", "pa55w0rd", "t0k3n"}
    assert "pa55w0rd" not in repr(WithUrl(url="ex://:pa55w0rd@h"))  # built in code too


@pytest.mark.parametrize(
    ("url", "split"),
    [
        ("redis://h:6379/0", ("redis://h:6379/0", None, None)),
        ("redis://alice:pw@h:6379/0", ("redis://h:6379/0", "alice", "pw")),
        ("redis://a%40b:p%40ss%3Aw%2Frd@h/1?x=1", ("redis://h/1?x=1", "a@b", "p@ss:w/rd")),
        ("redis://:pw@h", ("redis://h", "", "pw")),  # a password alone
        ("nats://t0ken@h:4222", ("nats://h:4222", "t0ken", None)),  # no ':': no password
        ("nats://user:@h", ("nats://h", "user", "")),  # an empty password is written
        ("redis://@h", ("redis://h", "", None)),
        ("redis://u:p@s@h", ("redis://h", "u", "p@s")),  # the last '@' ends the user-info
        ("unix://:hunter2@/run/redis.sock?db=2", ("unix:///run/redis.sock?db=2", "", "hunter2")),
    ],
)
def test_split_url_credentials_takes_the_user_info_out_decoded(
    url: str, split: tuple[str, str | None, str | None]
) -> None:
    assert split_url_credentials(url) == split


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Credentials(BackendSettings):
    url: str = setting("EX_URL", "ex://localhost", "Where; credentials in it move out.")
    user: str | None = setting("EX_USER", None, "User; overrides one in EX_URL.")
    password: Secret | None = setting("EX_PASSWORD", None, "Password.", secret=True)

    def __post_init__(self) -> None:
        clean, user, password = split_url_credentials(self.url)
        object.__setattr__(self, "url", clean)
        self.fill_unset(user=user, password=Secret(password) if password else None)
        super().__post_init__()


def test_credentials_from_a_url_fill_only_the_fields_left_unset() -> None:
    moved = _Credentials.from_env({"EX_URL": "ex://alice:pw@h"})
    assert (moved.url, moved.user, moved.password) == ("ex://h", "alice", Secret("pw"))
    given = {"EX_URL": "ex://alice:pw@h", "EX_USER": "bob", "EX_PASSWORD": "own"}
    kept = _Credentials.from_env(given)
    assert (kept.url, kept.user, kept.password) == ("ex://h", "bob", Secret("own"))
    partly = _Credentials(url="ex://carol@h", password=Secret("own"))  # hand-built too
    assert (partly.url, partly.user, partly.password) == ("ex://h", "carol", Secret("own"))
    none = _Credentials(url="ex://h")
    assert (none.user, none.password) == (None, None)
