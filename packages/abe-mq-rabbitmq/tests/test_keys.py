"""Key and group names: what RabbitMQ takes, refused before any I/O, and the queue names."""

from __future__ import annotations

import pytest
from abe.errors import InvalidKeyError

from abe_mq_rabbitmq import RabbitmqBackend
from abe_mq_rabbitmq._receiver import group_queue


@pytest.mark.parametrize("key", ["a/b", "a:b", "ключ", "a*b", "x" * 117, ""])
def test_keys_the_broker_refuses(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        RabbitmqBackend.key_rules.check(key)


@pytest.mark.parametrize("group", ["a.b", "a:b", "x" * 121])
def test_groups_abe_refuses_here(group: str) -> None:
    with pytest.raises(InvalidKeyError):
        RabbitmqBackend.group_rules.check(group)


def test_the_longest_names_fit_a_queue_name() -> None:
    """RabbitMQ names are at most 255 bytes: a group's queue and its creation lock fit."""
    key, group = "k" * 116, "g" * 120
    RabbitmqBackend.key_rules.check(key)
    RabbitmqBackend.group_rules.check(group)
    assert len(f"{group_queue(key, group)}:joining".encode()) <= 255


def test_group_queues_cannot_collide() -> None:
    """A group name holds no ':' or '.', so `<key>:<group>` names one (key, group) only."""
    assert group_queue("orders.eu", "billing") != group_queue("orders", "eu.billing")
    assert group_queue("orders", "billing") == "orders:billing"
