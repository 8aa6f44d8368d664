"""The settings and from_env(): every variable checked at once, the password never shown."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NoReturn

import pytest
from abe.errors import ConfigurationError

from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings

PASSWORD = "pa55-Never-Shown-81x"
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
    assert settings.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (settings.delivery_limit, settings.max_age) == (100, None)
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        100,
        30.0,
        10.0,
    )


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "RABBITMQ_URL": "amqps://app:secret@broker.internal:5671/orders",
        "ABE_RABBITMQ_DELIVERY_LIMIT": "7",
        "ABE_RABBITMQ_MAX_AGE": "7D",
        "ABE_MQ_PREFETCH": "12",
        "ABE_MQ_REDELIVERY_TIMEOUT": "4.5",
        "ABE_MQ_OPERATION_TIMEOUT": "3",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = RabbitmqSettings.from_env()
    assert settings.url == "amqps://app:secret@broker.internal:5671/orders"
    assert (settings.delivery_limit, settings.max_age) == (7, "7D")
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        12,
        4.5,
        3.0,
    )


def test_one_error_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "http://localhost:5672")
    monkeypatch.setenv("ABE_RABBITMQ_DELIVERY_LIMIT", "0")
    monkeypatch.setenv("ABE_MQ_PREFETCH", "lots")
    monkeypatch.setenv("ABE_MQ_OPERATION_TIMEOUT", "-1")
    with pytest.raises(ConfigurationError) as refused:
        RabbitmqBackend.from_env()
    assert set(refused.value.variables) == {
        "RABBITMQ_URL",
        "ABE_RABBITMQ_DELIVERY_LIMIT",
        "ABE_MQ_PREFETCH",
        "ABE_MQ_OPERATION_TIMEOUT",
    }
    assert "must start with amqp:// or amqps://" in str(refused.value)


@pytest.mark.parametrize("url", ["amqp://localhost:port/", "amqp:///vhost", "rabbitmq://host"])
def test_malformed_urls_are_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RABBITMQ_URL", url)
    with pytest.raises(ConfigurationError) as refused:
        RabbitmqSettings.from_env()
    assert refused.value.variables == ("RABBITMQ_URL",)


def test_the_password_in_the_url_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://app:{PASSWORD}@broker.internal:5672/")
    backend = RabbitmqBackend.from_env()
    assert backend.settings.url == f"amqp://app:{PASSWORD}@broker.internal:5672/"
    assert PASSWORD in backend.settings.secrets()
    for text in (repr(backend), repr(backend.settings), str(backend.settings.describe())):
        assert PASSWORD not in text
    assert repr(backend).endswith(" amqp://***@broker.internal:5672/ open>")


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
