"""Keys are literal NATS subjects; stream and consumer names are derived from them."""

from __future__ import annotations

import pytest

from abe.errors import InvalidKeyError
from abe_mq_nats import NatsBackend
from abe_mq_nats._client import consumer_name, stream_name

RULES = NatsBackend.key_rules


@pytest.mark.parametrize(
    "key", ["orders", "orders.created", "eu.orders.v2-new", "A_b-c.9", "x" * 196]
)
def test_accepted_keys(key: str) -> None:
    assert RULES.check(key) == key
    assert RULES.check(f"{key[:190]}-dlq")


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        ("", "empty"),
        ("orders.*", "'*'"),
        ("orders.>", "'>'"),
        ("has space", "' '"),
        ("tab\tkey", "'\\t'"),
        ("$JS.API.INFO", "'$'"),
        ("orders..created", "empty token"),
        (".orders", "empty token"),
        ("orders.", "empty token"),
        ("orders/created", "'/'"),
        ("x" * 197, "at most 196"),
    ],
)
def test_refused_keys_name_the_rule(key: str, rule: str) -> None:
    with pytest.raises(InvalidKeyError) as refused:
        RULES.check(key)
    assert rule in str(refused.value)


def test_stream_names_are_valid_and_distinct() -> None:
    assert stream_name("orders.created") == "orders_created"
    assert stream_name("orders") == "orders"
    for key in ("orders.created", "a.b.c", "x-y_z.w"):
        for name in (stream_name(key), stream_name(key, hashed=True)):
            assert not set(name) & set(" .*>/\\\t")
    assert stream_name("a.b", hashed=True) != stream_name("a_b", hashed=True)


def test_consumer_names() -> None:
    assert consumer_name("billing", "orders", dedicated=True) == "billing"
    shared = consumer_name("billing", "orders.created", dedicated=False)
    assert shared.startswith("billing-")
    assert "." not in shared
    assert shared != consumer_name("billing", "orders.deleted", dedicated=False)
