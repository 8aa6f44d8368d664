"""What a backend's broker can and cannot do, declared once per backend class.

The contract suite skips the tests of a capability declared missing and fails a
declared capability that does not hold, so the declaration is always true.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """The broker's abilities that change what an application can rely on."""

    fan_out: bool = True
    """Different groups each receive every message of a key."""
    per_key_ordering: bool = True
    """One consumer receives one key's messages in publish order."""
    persistence: bool = True
    """Acknowledged messages survive a broker restart."""
    native_delay: bool = False
    """The broker itself holds a nacked message back (otherwise the backend emulates it)."""
    deduplication: bool = False
    """A publish retried with the same message id is stored once (within the broker's window).

    Without it, both copies are delivered, with the same id; `abe.Deduplicate` handles
    them once in a consumer.
    """
    headers: bool = True
    """Messages carry headers (user headers, trace context); False refuses any."""
    max_payload_bytes: int = 1_048_576
    """The largest JSON body the backend accepts by default."""
    remote: bool = True
    """The broker is another process, reached over a network (so it can be down or restarted)."""
