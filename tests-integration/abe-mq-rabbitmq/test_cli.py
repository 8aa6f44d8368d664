"""The `abe` command on RabbitMQ: `abe check`, `abe demo` and `abe bench` succeed and clean up.

The broker on 5672 is shared, so each test compares the queues and exchanges named like
the command's own keys before and after: none of those the command made may be left.
"""

from __future__ import annotations

from abe_brokers import OWN_KEY_PREFIXES, RabbitmqBroker, run_abe
from abe_mq_rabbitmq_testing import broker_names


def _abe(broker: RabbitmqBroker, *arguments: str) -> str:
    before = broker_names(OWN_KEY_PREFIXES)
    output = run_abe("rabbitmq", broker.env(), *arguments)
    left = broker_names(OWN_KEY_PREFIXES) - before
    assert not left, f"abe {arguments[0]} left these behind: {sorted(left)}"
    return output


def test_abe_check(rabbitmq_broker: RabbitmqBroker) -> None:
    output = _abe(rabbitmq_broker, "check")
    assert "OK: rabbitmq round trip" in output


def test_abe_demo(rabbitmq_broker: RabbitmqBroker) -> None:
    output = _abe(rabbitmq_broker, "demo", "--quiet")
    assert "backend: rabbitmq (abe-mq-rabbitmq" in output
    assert "OK: all 39 good orders were packed" in output


def test_abe_bench(rabbitmq_broker: RabbitmqBroker) -> None:
    output = _abe(rabbitmq_broker, "bench", "--messages", "200")
    assert "aio-pika" in output  # the raw client measured beside abe


def test_no_command_shows_the_password(rabbitmq_broker: RabbitmqBroker) -> None:
    secret = "Cl1-Pa55word-Never-Shown"
    elsewhere = {"RABBITMQ_URL": f"amqp://app:{secret}@{rabbitmq_broker.host}:1/"}
    listed = run_abe("rabbitmq", elsewhere, "backends")
    assert "amqp://***@" in listed, listed
    assert secret not in listed, listed
    checked = _abe(rabbitmq_broker, "check")
    userinfo = rabbitmq_broker.url.split("//", 1)[1].split("@", 1)[0]
    assert f"{userinfo}@" not in checked, checked
