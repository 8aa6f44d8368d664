"""Message headers: abe's own names, registered once, and the rules every user header meets.

abe's headers start with `abe-`; each one any backend writes is declared here, so two
providers never give one name two meanings. User headers follow one set of rules on
every backend (the strictest the supported brokers share), checked before any network
I/O, so code that publishes on one broker publishes unchanged on another:

- a name is an HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``), at most 256
  characters, not starting with `abe-` nor with a prefix the broker keeps for itself
  (`Nats-`, `AWS.`, `Amazon.`, `x-death`...);
- a value is text without control characters (tab excepted) that encodes as UTF-8 and
  neither starts nor ends with whitespace (NATS trims it);
- all user headers of one message take at most 4 KiB as UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from abe.errors import PayloadError

__all__ = [
    "BROKER_CONTROL_PREFIXES",
    "HEADER_ATTEMPT",
    "HEADER_ATTEMPTS",
    "HEADER_ERROR",
    "HEADER_ID",
    "HEADER_NOT_BEFORE",
    "HEADER_ORIGINAL_KEY",
    "HEADER_PACKED",
    "HEADER_PREFIX",
    "HEADER_PUBLISHED_AT",
    "MAX_HEADER_NAME",
    "MAX_USER_HEADER_BYTES",
    "RESERVED_HEADERS",
    "check_user_headers",
    "header_text",
]

HEADER_PREFIX = "abe-"
"""Headers whose names start with this are abe's own; user headers may not use it."""

HEADER_ID = "abe-id"
"""The message id: given by the publisher or made by abe, the same on every delivery."""
HEADER_PUBLISHED_AT = "abe-published-at"
"""Milliseconds since the Unix epoch, as decimal text."""
HEADER_ERROR = "abe-error"
"""On a dead letter: why it was dead-lettered, one line."""
HEADER_ATTEMPTS = "abe-attempts"
"""On a dead letter: how many times it was delivered."""
HEADER_ORIGINAL_KEY = "abe-original-key"
"""On a dead letter: the key it was read from."""
HEADER_ATTEMPT = "abe-attempt"
"""On a copy a backend writes to redeliver a message (Kafka): the attempt it will be."""
HEADER_NOT_BEFORE = "abe-not-before"
"""On a copy written for a delayed redelivery: ms since the epoch before which to hold it."""
HEADER_PACKED = "abe-headers"
"""User headers packed as one JSON object where the broker cannot carry them one by one."""

RESERVED_HEADERS: Mapping[str, str] = {
    HEADER_ID: "message id",
    HEADER_PUBLISHED_AT: "publish time",
    HEADER_ERROR: "dead-letter reason",
    HEADER_ATTEMPTS: "dead-letter attempts",
    HEADER_ORIGINAL_KEY: "dead-letter origin",
    HEADER_ATTEMPT: "attempt of a redelivered copy",
    HEADER_NOT_BEFORE: "due time of a delayed copy",
    HEADER_PACKED: "packed user headers",
}
"""Every header name abe writes, with what it carries."""

BROKER_CONTROL_PREFIXES: tuple[str, ...] = (
    "nats-",
    "aws.",
    "amazon.",
    "x-death",
    "x-first-death",
    "x-last-death",
    "x-delay",
)
"""Header prefixes that some broker acts on (case-insensitive): never user metadata.

`Nats-*` headers steer JetStream (`Nats-Rollup` purges a stream, `Nats-Expected-*`
makes a publish conditional); SQS refuses attribute names starting `AWS.`/`Amazon.`;
RabbitMQ writes `x-death` and its delayed-message exchange reads `x-delay`. Refusing
them on every backend keeps application code portable between brokers.
"""

MAX_HEADER_NAME = 256
MAX_USER_HEADER_BYTES = 4096
"""The most bytes (UTF-8 names and values) all user headers of one message may take."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_KNOWN: dict[str, str | None] = {}
"""Names checked before against the common rules, with the problem each has (None: fine)."""


def _common_problem(name: str) -> str | None:
    """What is wrong with `name` on every backend, or None."""
    if name in _KNOWN:
        return _KNOWN[name]
    problem: str | None = None
    lowered = name.lower()
    if not name:
        problem = "a header name must not be empty"
    elif len(name) > MAX_HEADER_NAME:
        problem = f"header name {name[:40]!r}... is over {MAX_HEADER_NAME} characters"
    elif _TOKEN.fullmatch(name) is None:
        problem = (
            f"header name {name!r} may only contain letters, digits and !#$%&'*+-.^_`|~ "
            f"(no spaces, ':' or control characters), so that every broker can carry it"
        )
    elif lowered.startswith(HEADER_PREFIX):
        problem = f"header name {name!r} starts with {HEADER_PREFIX!r}, which abe keeps for itself"
    else:
        problem = _control_problem(name, lowered, BROKER_CONTROL_PREFIXES)
    if len(_KNOWN) < 4096:
        _KNOWN[name] = problem
    return problem


def _control_problem(name: str, lowered: str, prefixes: Iterable[str]) -> str | None:
    for prefix in prefixes:
        if lowered.startswith(prefix):
            return (
                f"header name {name!r} starts with {prefix!r}, which a broker acts on (it is "
                f"not metadata); choose another name"
            )
    return None


def check_user_headers(
    headers: Mapping[str, str],
    *,
    reserved: frozenset[str] = frozenset(),
    prefixes: tuple[str, ...] = (),
    backend: str = "this backend's",
) -> dict[str, str]:
    """A copy of `headers` if every name and value may travel, else PayloadError naming why.

    `reserved` are names the backend's wire format uses itself (Redis: `data`);
    `prefixes` are lower-case control prefixes of the backend's broker beyond
    BROKER_CONTROL_PREFIXES.
    """
    checked: dict[str, str] = {}
    size = 0
    for name, value in headers.items():
        if not isinstance(name, str):
            raise PayloadError(f"header names must be str, got {type(name).__name__}")
        problem = _common_problem(name)
        if problem is None and prefixes:
            problem = _control_problem(name, name.lower(), prefixes)
        if problem is None and name in reserved:
            problem = (
                f"header name {name!r} is reserved by the {backend} wire format; choose another"
            )
        if problem is not None:
            raise PayloadError(problem)
        if not isinstance(value, str):
            raise PayloadError(f"header {name!r} must have a str value, got {type(value).__name__}")
        if _CONTROL.search(value) is not None:
            raise PayloadError(
                f"header {name!r} has a control character in its value (line breaks included); "
                f"headers carry one line of text"
            )
        if value != value.strip():
            raise PayloadError(
                f"header {name!r} has a value that starts or ends with whitespace, which some "
                f"brokers trim (NATS); trim it, or carry such text in the payload"
            )
        try:
            size += len(name) + len(value.encode())
        except UnicodeEncodeError:
            raise PayloadError(
                f"header {name!r} has a value that is not valid Unicode text (a lone surrogate); "
                f"it cannot be encoded as UTF-8"
            ) from None
        checked[name] = value
    if size > MAX_USER_HEADER_BYTES:
        raise PayloadError(
            f"the headers take {size:,} bytes, over the limit of {MAX_USER_HEADER_BYTES:,} that "
            f"every broker can carry; put large values in the payload"
        )
    return checked


def header_text(text: str, limit: int = 1000) -> str:
    """`text` made fit for a header value abe writes: one line, valid UTF-8, at most `limit`.

    Used for dead-letter reasons, which quote exceptions that may hold anything.
    """
    one_line = " ".join(_CONTROL.sub(" ", text).split())
    safe = one_line.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe[:limit]
