"""from_env(): every variable read, every problem named at once, no secret ever shown."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import NoReturn

import pytest

from abe.errors import ConfigurationError
from abe.settings import Secret
from abe_mq_nats import NatsBackend, NatsSettings

SEED = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"  # a well-formed NKey seed


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in NatsBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)


def _no_network(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("from_env() must not connect")


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> ConfigurationError:
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        NatsSettings.from_env()
    return caught.value


def test_defaults() -> None:
    settings = NatsSettings.from_env()
    assert settings.servers == ("nats://127.0.0.1:4222",)
    assert (settings.storage, settings.retention, settings.replicas) == ("file", "limits", 1)
    assert settings.token is None
    assert settings.user is None
    assert settings.tls is False
    assert settings.tls_context() is None
    assert settings.stream is None


def test_several_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:4222, nats://b , tls://[::1]:4443")
    settings = NatsSettings.from_env()
    assert settings.servers == ("nats://a:4222", "nats://b:4222", "tls://[::1]:4443")
    assert settings.tls


def test_token_in_url_moves_to_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://s3cr%40t@nats.example:4222")
    settings = NatsSettings.from_env()
    assert settings.servers == ("nats://nats.example:4222",)
    assert settings.token == Secret("s3cr@t")
    assert "s3cr" not in repr(settings)
    assert "s3cr" not in repr(NatsBackend(settings))


def test_user_and_password_in_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://abe:pa55@h1:4222,nats://abe:pa55@h2:4222")
    settings = NatsSettings.from_env()
    assert settings.user == "abe"
    assert settings.password == Secret("pa55")
    assert settings.servers == ("nats://h1:4222", "nats://h2:4222")
    assert "pa55" not in repr(settings)


def test_credentials_written_two_ways_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://abe:p%40ss@h1:4222,nats://abe:p@ss@h2:4222")
    assert NatsSettings.from_env().password == Secret("p@ss")  # compared decoded


def test_variables_for_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_USER", "abe")
    monkeypatch.setenv("NATS_PASSWORD", "pa55")
    settings = NatsSettings.from_env()
    assert (settings.user, settings.password) == ("abe", Secret("pa55"))
    monkeypatch.delenv("NATS_USER")
    monkeypatch.delenv("NATS_PASSWORD")
    monkeypatch.setenv("NATS_TOKEN", "t0k")
    assert NatsSettings.from_env().token == Secret("t0k")


def test_every_problem_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(
        monkeypatch,
        NATS_URL="http://localhost:4222",
        NATS_USER="abe",
        NATS_CREDS="/nonexistent/abe.creds",
        ABE_NATS_STORAGE="disk",
        ABE_NATS_REPLICAS="9",
        ABE_NATS_MAX_AGE="forever",
        ABE_NATS_MAX_BYTES="0",
        ABE_NATS_RECONNECT_WAIT="-1",
        ABE_MQ_PREFETCH="none",
    )
    assert set(error.variables) == {
        "NATS_URL",
        "NATS_PASSWORD",
        "NATS_CREDS",
        "ABE_NATS_STORAGE",
        "ABE_NATS_REPLICAS",
        "ABE_NATS_MAX_AGE",
        "ABE_NATS_MAX_BYTES",
        "ABE_NATS_RECONNECT_WAIT",
        "ABE_MQ_PREFETCH",
    }
    for name in error.variables:
        assert name in str(error)


def test_workqueue_retention_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(monkeypatch, ABE_NATS_RETENTION="workqueue")
    assert "fan out" in error.problems["ABE_NATS_RETENTION"]


def test_conflicting_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(
        monkeypatch, NATS_URL="nats://tok3n@h:4222", NATS_TOKEN="other-t0ken", NATS_PASSWORD="pw"
    )
    assert {"NATS_URL", "NATS_USER"} <= set(error.variables)
    assert "tok3n" not in str(error)
    assert "other-t0ken" not in str(error)
    assert "pw" not in str(error)


def test_different_credentials_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(monkeypatch, NATS_URL="nats://one@h1:4222,nats://two@h2:4222")
    assert error.variables == ("NATS_URL",)
    assert "one" not in str(error).replace("one ", "")  # the token is never echoed


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(
        monkeypatch,
        NATS_URL="nats://hunter2-token@host:notaport",
        NATS_NKEY_SEED="SUnot-a-real-seed-hunter3",
    )
    assert {"NATS_URL", "NATS_NKEY_SEED"} <= set(error.variables)
    secret = {variable.name for variable in NatsBackend.variables if variable.secret}
    assert secret == {
        "NATS_URL",
        "NATS_TOKEN",
        "NATS_PASSWORD",
        "NATS_NKEY_SEED",
        "NATS_TLS_KEY_PASSWORD",
    }
    assert "hunter2" not in str(error)
    assert "hunter3" not in str(error)


def test_nkey_seed_as_value_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NATS_NKEY_SEED", SEED)
    settings = NatsSettings.from_env()
    assert settings.nkey_seed == Secret(SEED)
    assert settings.nkey_seed_file is None
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(SEED)
    monkeypatch.setenv("NATS_NKEY_SEED", str(seed_file))
    settings = NatsSettings.from_env()
    assert settings.nkey_seed is None
    assert settings.nkey_seed_file == seed_file
    assert SEED not in repr(settings)


def test_nkey_and_creds_exclude_each_other(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    error = refused(monkeypatch, NATS_NKEY_SEED=SEED, NATS_CREDS=str(creds))
    assert error.variables == ("NATS_CREDS",)


def test_tls_files_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("this is not a certificate")
    error = refused(monkeypatch, NATS_TLS_CA=str(not_pem))
    assert error.variables == ("NATS_TLS_CA",)
    error = refused(monkeypatch, NATS_TLS_CA=str(not_pem), NATS_TLS_KEY=str(not_pem))
    assert "NATS_TLS_CERT" in error.variables


def test_duplicate_window_within_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(monkeypatch, ABE_NATS_MAX_AGE="60", ABE_NATS_DUPLICATE_WINDOW="120")
    assert error.variables == ("ABE_NATS_DUPLICATE_WINDOW",)


def test_stream_name_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    error = refused(monkeypatch, ABE_NATS_STREAM="orders.all")
    assert error.variables == ("ABE_NATS_STREAM",)
    monkeypatch.setenv("ABE_NATS_STREAM", "ORDERS")
    assert NatsSettings.from_env().stream == "ORDERS"


def test_a_token_and_an_option_in_the_url_show_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "NATS_URL", "tls://t0ken-s3cret@h1:4222,tls://t0ken-s3cret@h2?auth_token=qu3ry-s3cret"
    )
    settings = NatsSettings.from_env()
    assert settings.servers == ("tls://h1:4222", "tls://h2:4222"), "NATS reads no URL options"
    for shown in (repr(settings), str(settings), repr(NatsBackend(settings))):
        assert "tls://h1:4222" in shown
        assert "tls://h2:4222" in shown
        assert "s3cret" not in shown


@pytest.mark.parametrize(
    "server",
    [
        "nats://user:s3cret@host:4222",
        "nats://s3cret@host:4222",
        "nats://host:4222?auth_token=s3cret",
        "nats://host:4222/?token=s3cret",
        "nats://host:4222#s3cret",
    ],
)
def test_settings_refuse_credentials_and_options_in_servers(server: str) -> None:
    with pytest.raises(ValueError, match=r"credentials or \?options") as refused:
        NatsSettings(servers=(server,))
    assert "s3cret" not in str(refused.value)


def test_settings_refuse_a_certificate_without_its_key() -> None:
    with pytest.raises(ValueError, match="together"):
        NatsSettings(tls_cert=Path("c.pem"))
    settings = NatsSettings(servers=("nats://h:1",), operation_timeout=2.0)
    assert dataclasses.replace(settings, prefetch=5).prefetch == 5


def test_readme_table_is_the_declarations() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    expected = [
        f"| `{variable.name}` | "
        + (f"`{variable.default}`" if variable.default is not None else "")
        + f" | {variable.meaning} |"
        for variable in NatsBackend.variables
    ]
    assert [
        row for row in rows if row.split("`")[1] in {v.name for v in NatsBackend.variables}
    ] == expected
