"""The settings and from_env(): every variable checked at once, the token never shown."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NoReturn

import pytest
from abe.errors import ConfigurationError
from abe.settings import Secret

from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings

TOKEN = "t0ken-Never-Shown-81x"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of this backend set, and no network: reading settings must not connect."""
    for variable in RabbitmqBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)

    def no_network(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("reading settings opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_defaults() -> None:
    settings = RabbitmqSettings.from_env()
    assert settings == RabbitmqSettings()
    assert settings.url == "rabbitmq://localhost:7000"
    assert settings.token is None
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        100,
        30.0,
        10.0,
    )


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "RABBITMQ_URL": "rabbitmq://broker.internal:7001",
        "RABBITMQ_TOKEN": TOKEN,
        "ABE_MQ_PREFETCH": "12",
        "ABE_MQ_REDELIVERY_TIMEOUT": "4.5",
        "ABE_MQ_OPERATION_TIMEOUT": "3",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = RabbitmqSettings.from_env()
    assert settings.url == "rabbitmq://broker.internal:7001"
    assert settings.token == Secret(TOKEN)
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        12,
        4.5,
        3.0,
    )


def test_one_error_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "http://localhost:7000")
    monkeypatch.setenv("ABE_MQ_PREFETCH", "lots")
    monkeypatch.setenv("ABE_MQ_OPERATION_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError) as refused:
        RabbitmqBackend.from_env()
    assert refused.value.variables == (
        "RABBITMQ_URL",
        "ABE_MQ_PREFETCH",
        "ABE_MQ_OPERATION_TIMEOUT",
    )
    assert "must start with rabbitmq://" in str(refused.value)


def test_credentials_in_the_url_are_refused_without_being_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"rabbitmq://user:{TOKEN}@localhost:7000"
    monkeypatch.setenv("RABBITMQ_URL", url)
    with pytest.raises(ConfigurationError) as refused:
        RabbitmqSettings.from_env()
    assert refused.value.variables == ("RABBITMQ_URL",)
    assert "RABBITMQ_TOKEN" in str(refused.value)
    assert TOKEN not in str(refused.value)


def test_the_token_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_TOKEN", TOKEN)
    backend = RabbitmqBackend.from_env()
    assert backend.settings.token is not None
    assert backend.settings.token.reveal() == TOKEN
    for text in (repr(backend), repr(backend.settings), str(backend.settings.describe())):
        assert TOKEN not in text
    assert repr(backend).endswith(" rabbitmq://localhost:7000 open>")


def test_readme_table_is_the_declarations() -> None:
    """The README's variable table, row for row, is what `from_env()` reads."""

    def row(name: str, default: str | None, meaning: str) -> str:
        shown = f" `{default}` " if default else " "
        return f"| `{name}` |{shown}| {meaning} |"

    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| Variable | Default | Meaning |")
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line)
    variables = RabbitmqBackend.variables
    assert table == [row(v.name, v.default, v.meaning) for v in variables]
