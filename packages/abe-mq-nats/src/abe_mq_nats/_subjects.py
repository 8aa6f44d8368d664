"""Keys are NATS subjects: which ones abe accepts, and the stream and consumer names it derives."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from abe.backends.message_queue.base.keys import KeyRules
from abe.errors import InvalidKeyError

__all__ = [
    "KEY_RULES",
    "SubjectRules",
    "consumer_name",
    "hashed_stream_name",
    "stream_name",
    "subject_matches",
]


@dataclass(frozen=True)
class SubjectRules(KeyRules):
    """KeyRules plus the token rule of NATS subjects: no empty token (`a..b`, `.a`, `a.`).

    Wildcards (`*`, `>`), spaces and `$` (reserved `$JS`, `$SYS` subjects) are outside
    the allowed characters, so a key is always a literal subject one can publish to.
    """

    def check(self, key: object) -> str:
        checked = super().check(key)
        if "" in checked.split("."):
            raise InvalidKeyError(
                f"{self.kind} {checked!r} has an empty token; NATS subjects are tokens "
                f"separated by single dots, e.g. 'orders.created' (not 'orders..created', "
                f"'.orders' or 'orders.')"
            )
        return checked


KEY_RULES = SubjectRules(
    max_length=200,
    allowed="A-Za-z0-9._-",
    described=(
        "letters, digits, '_', '-' and '.' between tokens (NATS subjects without wildcards "
        "'*' '>', spaces or '$')"
    ),
    broker="NATS",
)
"""Keys abe-mq-nats accepts: literal subjects in the characters every abe broker accepts."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def stream_name(key: str) -> str:
    """The name of the stream abe creates for `key`: the key with '.' written as '_'."""
    return key.replace(".", "_")


def hashed_stream_name(key: str) -> str:
    """The name used when `stream_name(key)` is taken by a stream for other subjects."""
    return f"{stream_name(key)}-{_digest(key)}"


def consumer_name(group: str, key: str, *, dedicated: bool) -> str:
    """The durable consumer of `group` on `key`'s stream.

    A stream holding only `key` gets the group's name itself; a stream shared by several
    keys gets one consumer per key, named after the group and a digest of the key.
    """
    return group if dedicated else f"{group}-{_digest(key)}"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal `subject` is covered by the stream subject `pattern` (`*`, `>`)."""
    wanted = pattern.split(".")
    tokens = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)
