"""Key rules: what a broker accepts, and messages that name the rule and the offending part."""

from __future__ import annotations

import pytest

from abe.backends.message_queue.base.keys import DEAD_LETTER_SUFFIX, KeyRules, dead_letter_key
from abe.errors import InvalidKeyError

RULES = KeyRules(
    max_length=20,
    allowed="a-z0-9.",
    described="lower-case letters, digits and '.'",
    broker="examplemq",
)


def refuse(key: object, rules: KeyRules = RULES) -> str:
    with pytest.raises(InvalidKeyError) as refused:
        rules.check(key)
    return str(refused.value)


def test_an_accepted_key_is_returned_unchanged() -> None:
    assert RULES.check("orders.eu") == "orders.eu"


@pytest.mark.parametrize(
    ("key", "bad"),
    [("Orders", "O"), ("or ders", " "), ("a/b", "/"), ("tab\tkey", "\t"), ("ordérs", "é")],
)
def test_message_names_the_first_offending_character_and_the_broker_rule(
    key: str, bad: str
) -> None:
    message = refuse(key)
    assert f"key {key!r} contains {bad!r}" in message
    assert "examplemq keys may only contain lower-case letters, digits and '.'" in message


def test_a_trailing_newline_is_refused() -> None:
    # `$` in a pattern would let "orders\n" through; the check must match the whole key.
    assert "'\\n'" in refuse("orders\n")


def test_an_empty_key_is_refused() -> None:
    assert "must not be empty" in refuse("")


@pytest.mark.parametrize("key", [None, 42, b"orders", ["orders"]])
def test_a_key_that_is_not_a_str_is_refused(key: object) -> None:
    assert f"a key must be a str, got {type(key).__name__}" in refuse(key)


def test_the_limit_leaves_room_for_the_dead_letter_suffix() -> None:
    limit = RULES.max_length - len(DEAD_LETTER_SUFFIX)
    longest = "k" * limit
    assert RULES.check(longest) == longest
    assert len(dead_letter_key(longest)) == RULES.max_length
    message = refuse("k" * (limit + 1))
    assert f"is {limit + 1} characters" in message
    assert f"examplemq keys may have at most {limit}" in message
    assert "'-dlq' dead-letter suffix" in message


def test_a_key_as_long_as_the_brokers_own_limit_is_refused() -> None:
    # Its dead-letter key would be over the broker's limit.
    refuse("k" * RULES.max_length)


def test_a_long_key_is_shortened_in_the_message() -> None:
    message = refuse("k" * 5000, KeyRules(100, "k", "k", "examplemq"))
    assert "k" * 41 not in message
    assert "is 5000 characters" in message


def test_dead_letter_key() -> None:
    assert DEAD_LETTER_SUFFIX == "-dlq"
    assert dead_letter_key("orders") == "orders-dlq"


def test_rules_compare_by_their_declaration() -> None:
    same = KeyRules(
        max_length=20,
        allowed="a-z0-9.",
        described="lower-case letters, digits and '.'",
        broker="examplemq",
    )
    assert same == RULES
    assert KeyRules(21, RULES.allowed, RULES.described, RULES.broker) != RULES
