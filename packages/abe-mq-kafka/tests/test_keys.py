"""Kafka's topic rules, checked before any I/O."""

from __future__ import annotations

import pytest

from abe.errors import InvalidKeyError
from abe_mq_kafka import KafkaBackend

RULES = KafkaBackend.key_rules


@pytest.mark.parametrize("key", ["orders", "a.b_c-D9", "x" * 245, "..a", "a.."])
def test_valid_topic_names(key: str) -> None:
    assert RULES.check(key) == key


@pytest.mark.parametrize(
    "key", ["", ".", "..", "x" * 246, "a b", "a/b", "a:b", "ümlaut", "tab\t", "comma,"]
)
def test_refused_topic_names(key: str) -> None:
    with pytest.raises(InvalidKeyError) as refused:
        RULES.check(key)
    assert "key" in str(refused.value)


def test_every_valid_key_has_a_valid_dead_letter_topic() -> None:
    longest = "k" * (RULES.max_length - len("-dlq"))
    assert RULES.check(longest)
    assert len(longest + "-dlq") <= 249
