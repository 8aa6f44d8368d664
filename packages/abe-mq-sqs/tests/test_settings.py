"""SqsSettings.from_env(): every variable checked at once, secrets never shown, no I/O."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NoReturn

import pytest

from abe.errors import ConfigurationError
from abe.settings import Secret
from abe_mq_sqs import SqsBackend, SqsSettings

KEYS = {"AWS_ACCESS_KEY_ID": "AKIAUNITTESTKEY", "AWS_SECRET_ACCESS_KEY": "unit-test-secret"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("from_env() opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """AWS config files that do not exist: tests never read the developer's ~/.aws."""
    return {
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
    }


def settings(env: dict[str, str]) -> SqsSettings:
    return SqsSettings.from_env(env)


def refused(env: dict[str, str]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        SqsSettings.from_env(env)
    return caught.value


def test_defaults(files: dict[str, str]) -> None:
    got = settings({**files, **KEYS, "AWS_REGION": "eu-west-1"})
    assert got.region == "eu-west-1"
    assert got.endpoint_url is None
    assert got.auto_create is True
    assert got.queue_prefix == ""
    assert got.wait_time_seconds == 20
    assert got.poll_interval == 20.0
    assert got.max_payload_bytes == 1_048_576 - 1_024
    assert got.max_message_bytes == 1_048_576
    assert got.visibility_timeout == 30
    assert got.max_attempts == 3
    assert got.connect_timeout == 3.0
    assert got.access_key_id == Secret("AKIAUNITTESTKEY")


def test_everything_set(files: dict[str, str]) -> None:
    got = settings(
        {
            **files,
            **KEYS,
            "AWS_SESSION_TOKEN": "tok",
            "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_ENDPOINT_URL": "http://elsewhere:1",
            "AWS_ENDPOINT_URL_SQS": "http://localhost:4566",
            "ABE_SQS_QUEUE_PREFIX": "prod-",
            "ABE_SQS_AUTO_CREATE": "no",
            "ABE_SQS_WAIT_TIME_SECONDS": "0",
            "ABE_SQS_MAX_PAYLOAD_BYTES": "261120",
            "ABE_SQS_CONNECT_TIMEOUT": "0.5",
            "ABE_SQS_MAX_ATTEMPTS": "5",
            "ABE_MQ_REDELIVERY_TIMEOUT": "2.5",
            "ABE_MQ_PREFETCH": "7",
            "ABE_MQ_OPERATION_TIMEOUT": "4",
        }
    )
    assert got.region == "us-west-2"
    assert got.endpoint_url == "http://localhost:4566"
    assert got.session_token == Secret("tok")
    assert (got.queue_prefix, got.auto_create, got.wait_time_seconds) == ("prod-", False, 0)
    assert got.poll_interval == 1.0
    assert got.max_payload_bytes == 261_120
    assert got.max_message_bytes == 262_144
    assert (got.connect_timeout, got.max_attempts) == (0.5, 5)
    assert got.visibility_timeout == 3  # whole seconds, rounded up
    assert (got.prefetch, got.operation_timeout) == (7, 4.0)


def test_region_precedence_and_endpoint_fallback(files: dict[str, str]) -> None:
    got = settings(
        {
            **files,
            **KEYS,
            "AWS_REGION": "ap-south-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": "https://sqs.example.test",
        }
    )
    assert got.region == "ap-south-1"
    assert got.endpoint_url == "https://sqs.example.test"


def test_every_problem_at_once(files: dict[str, str]) -> None:
    error = refused(
        {
            **files,
            "AWS_ACCESS_KEY_ID": "AKIAONLYHALF",
            "AWS_SESSION_TOKEN": "lonely-token",
            "AWS_ENDPOINT_URL_SQS": "not a url",
            "ABE_SQS_QUEUE_PREFIX": "x" * 41,
            "ABE_SQS_AUTO_CREATE": "perhaps",
            "ABE_SQS_WAIT_TIME_SECONDS": "-1",
            "ABE_SQS_MAX_PAYLOAD_BYTES": "1048576",
            "ABE_SQS_MAX_ATTEMPTS": "lots",
            "ABE_SQS_CONNECT_TIMEOUT": "0",
            "ABE_MQ_PREFETCH": "0",
        }
    )
    assert set(error.variables) == {
        "AWS_REGION",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_SQS",
        "ABE_SQS_QUEUE_PREFIX",
        "ABE_SQS_AUTO_CREATE",
        "ABE_SQS_WAIT_TIME_SECONDS",
        "ABE_SQS_MAX_PAYLOAD_BYTES",
        "ABE_SQS_MAX_ATTEMPTS",
        "ABE_SQS_CONNECT_TIMEOUT",
        "ABE_MQ_PREFETCH",
    }
    assert "AKIAONLYHALF" not in str(error)
    assert "lonely-token" not in str(error)


def test_secret_key_without_key_id(files: dict[str, str]) -> None:
    error = refused({**files, "AWS_REGION": "us-east-1", "AWS_SECRET_ACCESS_KEY": "half-a-secret"})
    assert error.variables == ("AWS_ACCESS_KEY_ID",)
    assert "half-a-secret" not in str(error)


def test_no_region_anywhere(files: dict[str, str]) -> None:
    error = refused({**files, **KEYS})
    assert error.variables == ("AWS_REGION",)
    assert "AWS_DEFAULT_REGION" in str(error)


@pytest.mark.parametrize("region", ["us east 1", "-us-east-1", "eu_west_1", "x" * 70])
def test_malformed_region(files: dict[str, str], region: str) -> None:
    assert refused({**files, **KEYS, "AWS_DEFAULT_REGION": region}).variables == (
        "AWS_DEFAULT_REGION",
    )


def test_region_and_credentials_from_a_profile(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile staging]\nregion = eu-central-1\n[default]\nregion = us-west-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[staging]\naws_access_key_id = A\naws_secret_access_key = B\n")
    env = {"AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    got = settings({**env, "AWS_PROFILE": "staging", "AWS_EC2_METADATA_DISABLED": "true"})
    assert (got.profile, got.region, got.access_key_id) == ("staging", "eu-central-1", None)
    assert settings(env).region == "us-west-1"  # the default profile's


def test_unknown_profile(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile staging]\nregion = eu-central-1\n")
    error = refused(
        {
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_PROFILE": "prod",
            "AWS_REGION": "us-east-1",
        }
    )
    assert error.variables == ("AWS_PROFILE",)
    assert "staging" in str(error)


def test_unreadable_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("this is [not an ini file\n")
    error = refused(
        {
            **KEYS,
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }
    )
    assert error.variables == ("AWS_CONFIG_FILE",)


def test_no_credentials_with_instance_metadata_off(files: dict[str, str]) -> None:
    env = {**files, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    error = refused(env)
    assert error.variables == ("AWS_ACCESS_KEY_ID",)
    assert "AWS_PROFILE" in str(error)


def test_no_credentials_leaves_the_chain_to_botocore(files: dict[str, str]) -> None:
    """Without keys or a profile, credentials may come from the network (instance metadata,
    ECS, web identity): from_env() accepts that and botocore resolves them on first use."""
    assert settings({**files, "AWS_REGION": "us-east-1"}).access_key_id is None
    web = {**files, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    assert settings({**web, "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}) is not None
    ecs = {**web, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}
    assert settings(ecs) is not None


def test_redelivery_timeout_is_bounded_by_the_visibility_limit(files: dict[str, str]) -> None:
    error = refused(
        {**files, **KEYS, "AWS_REGION": "us-east-1", "ABE_MQ_REDELIVERY_TIMEOUT": "43201"}
    )
    assert error.variables == ("ABE_MQ_REDELIVERY_TIMEOUT",)
    assert (
        settings(
            {**files, **KEYS, "AWS_REGION": "us-east-1", "ABE_MQ_REDELIVERY_TIMEOUT": "0.2"}
        ).visibility_timeout
        == 1
    )


def test_secrets_are_never_shown(files: dict[str, str]) -> None:
    got = settings({**files, **KEYS, "AWS_SESSION_TOKEN": "tok-123", "AWS_REGION": "us-east-1"})
    backend = SqsBackend(got)
    for text in (repr(got), str(got), repr(backend), str(got.describe())):
        for secret in ("AKIAUNITTESTKEY", "unit-test-secret", "tok-123"):
            assert secret not in text


def test_endpoint_with_credentials_is_redacted_in_errors(files: dict[str, str]) -> None:
    error = refused(
        {**files, **KEYS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_SQS": "ftp://u:pw@h:1"}
    )
    assert "pw" not in str(error)


ENDPOINT_SECRETS = ("sig-0123456789abcdef", "endpoint-pass-value", "endpoint-user")
SECRET_ENDPOINT = (
    "https://sqs.example.test:4566/?X-Amz-Signature=sig-0123456789abcdef"
    "&password=endpoint-pass-value&mode=fast"
)
"""An endpoint with secret query options, which botocore sends as the request's query."""
EVERY_SECRET = ("AKIAUNITTESTKEY", "unit-test-secret", "tok-123", *ENDPOINT_SECRETS)


def assert_shows_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in EVERY_SECRET:
            assert secret not in text, f"{secret!r} shown in {text!r}"


def test_endpoint_secrets_are_never_shown(files: dict[str, str]) -> None:
    """repr(settings), describe() and repr(backend) all show the endpoint through redact_url."""
    got = settings(
        {
            **files,
            **KEYS,
            "AWS_SESSION_TOKEN": "tok-123",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_SQS": SECRET_ENDPOINT,
        }
    )
    assert got.endpoint_url == SECRET_ENDPOINT  # botocore still gets it whole
    backend = SqsBackend(got)
    assert_shows_no_secret(repr(got), str(got), repr(backend), str(got.describe()))
    for text in (repr(got), repr(backend), str(got.describe()["endpoint_url"])):
        assert "https://sqs.example.test:4566/?X-Amz-Signature=***" in text
        assert "mode=fast" in text  # the rest stays readable


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"])
def test_endpoint_with_user_info_is_refused(files: dict[str, str], variable: str) -> None:
    """aiohttp cannot send user info beside SigV4's Authorization header: say so at once."""
    error = refused(
        {
            **files,
            **KEYS,
            "AWS_REGION": "us-east-1",
            variable: "http://endpoint-user:endpoint-pass-value@localhost:4566",
        }
    )
    assert error.variables == (variable,)
    assert "must not carry a user name or password" in str(error)
    assert "'http://***@localhost:4566'" in str(error)
    assert_shows_no_secret(str(error), repr(error), repr(error.problems))


def test_constructor_refuses_user_info_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="endpoint_url must not carry") as refused_here:
        SqsSettings(endpoint_url="https://endpoint-user:endpoint-pass-value@sqs.example.test")
    assert_shows_no_secret(str(refused_here.value))


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "AWS_SESSION_TOKEN"),
        ({"AWS_SECRET_ACCESS_KEY": None}, "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_ACCESS_KEY_ID": None}, "AWS_ACCESS_KEY_ID"),
        ({"AWS_ENDPOINT_URL_SQS": "ftp://endpoint-user:endpoint-pass-value@h:1"}, None),
        ({"AWS_ENDPOINT_URL_SQS": "http://endpoint-user:endpoint-pass-value@h:port"}, None),
        ({"AWS_ENDPOINT_URL_SQS": "ftp://h:1/?X-Amz-Signature=sig-0123456789abcdef"}, None),
        ({"AWS_ENDPOINT_URL_SQS": "http://u:endpoint-pass-value@h:1,http://h:2"}, None),
        ({"AWS_ENDPOINT_URL_SQS": "http://bad_host!:1/?password=endpoint-pass-value"}, None),
        (
            {"AWS_ENDPOINT_URL_SQS": None, "AWS_ENDPOINT_URL": SECRET_ENDPOINT.replace(".", "\t.")},
            None,
        ),
        ({"AWS_REGION": "not a region"}, "AWS_REGION"),
        ({"AWS_PROFILE": "nobody"}, "AWS_PROFILE"),
        ({"ABE_SQS_QUEUE_PREFIX": "bad prefix"}, "ABE_SQS_QUEUE_PREFIX"),
        ({"ABE_MQ_REDELIVERY_TIMEOUT": "50000"}, "ABE_MQ_REDELIVERY_TIMEOUT"),
    ],
)
def test_no_configuration_error_echoes_a_secret(
    files: dict[str, str], changes: dict[str, str | None], variable: str | None
) -> None:
    """Each refusal names its variable; none shows a key, token or secret part of a URL.

    `changes` set (or, with None, unset) variables of an otherwise good environment that
    holds every kind of secret; `variable` is the one refused (None: the endpoint's)."""
    env = {
        **files,
        **KEYS,
        "AWS_SESSION_TOKEN": "tok-123",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SQS": SECRET_ENDPOINT,
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    error = refused(env)
    if variable is None:
        endpoint = next(name for name, value in changes.items() if value and "ENDPOINT" in name)
        assert error.variables == (endpoint,)
    else:
        assert variable in error.variables
    assert_shows_no_secret(str(error), repr(error), repr(error.problems))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("wait_time_seconds", 21),
        ("max_payload_bytes", 0),
        ("max_payload_bytes", 1_048_576),
        ("connect_timeout", 0.0),
        ("max_attempts", 0),
        ("queue_prefix", "has space"),
        ("redelivery_timeout", 50_000.0),
    ],
)
def test_constructor_checks(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SqsSettings(**{field: value})  # type: ignore[arg-type]


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> None:
    for variable in SqsBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    for name, value in {**files, **KEYS, "AWS_REGION": "sa-east-1"}.items():
        monkeypatch.setenv(name, value)
    backend = SqsBackend.from_env()
    assert backend.settings.region == "sa-east-1"
    assert "sa-east-1" in repr(backend)


def test_variables_are_listed_once() -> None:
    names = [variable.name for variable in SqsBackend.variables]
    assert len(names) == len(set(names))
    secret = {variable.name for variable in SqsBackend.variables if variable.secret}
    assert secret == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert {"ABE_MQ_KEYS", "ABE_MQ_REDELIVERY_TIMEOUT", "AWS_ENDPOINT_URL_SQS"} <= set(names)
