"""Rules for routing keys, checked before any network I/O with a message naming the rule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from abe.errors import InvalidKeyError

__all__ = ["DEAD_LETTER_SUFFIX", "KeyRules", "dead_letter_key"]

DEAD_LETTER_SUFFIX = "-dlq"


def dead_letter_key(key: str) -> str:
    """The key that receives `key`'s dead letters."""
    return f"{key}{DEAD_LETTER_SUFFIX}"


@dataclass(frozen=True)
class KeyRules:
    """Which keys a broker accepts: a length limit and a set of allowed characters.

    `allowed` is the inside of a regular-expression character class (`A-Za-z0-9._-`);
    `described` says the same in words for error messages. The limit leaves room for
    the dead-letter suffix, so every valid key also has a valid dead-letter key.
    """

    max_length: int
    allowed: str
    described: str
    broker: str
    kind: str = "key"
    """What is named: "key" (leaves room for the dead-letter suffix) or "group"."""
    dotted: bool = False
    """Dots separate tokens that must not be empty (NATS subjects): no `a..b`, `.a` or `a.`."""
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", re.compile(f"[{self.allowed}]+"))

    def check(self, key: object) -> str:
        """Return `key` if the broker accepts it, else raise InvalidKeyError naming the rule."""
        kind = self.kind
        if not isinstance(key, str):
            raise InvalidKeyError(f"a {kind} must be a str, got {type(key).__name__}")
        if not key:
            raise InvalidKeyError(f"a {kind} must not be empty; give it a name")
        reserved = len(DEAD_LETTER_SUFFIX) if kind == "key" else 0
        limit = self.max_length - reserved
        if len(key) > limit:
            room = f" (leaving room for the {DEAD_LETTER_SUFFIX!r} dead-letter suffix)"
            raise InvalidKeyError(
                f"{kind} {key[:40]!r}... is {len(key)} characters; {self.broker} {kind}s may "
                f"have at most {limit}{room if reserved else ''}"
            )
        if self._pattern.fullmatch(key) is None:
            bad = next(char for char in key if self._pattern.fullmatch(char) is None)
            raise InvalidKeyError(
                f"{kind} {key!r} contains {bad!r}; {self.broker} {kind}s may only contain "
                f"{self.described}"
            )
        if self.dotted and "" in key.split("."):
            raise InvalidKeyError(
                f"{kind} {key!r} has an empty token; {self.broker} {kind}s are tokens separated "
                f"by single dots, e.g. 'orders.created' (not 'orders..created', '.orders' or "
                f"'orders.')"
            )
        return key
