"""How big a crash run is: CI sizes by default, the full run through ABE_CRASH_* variables.

``ABE_CRASH_MESSAGES=10000`` (or ``nox -s crash -- --messages 10000``) is the run the
issue describes: about a minute of publishing, a worker killed every ~2 s. Every size
can be set on its own; a bad value is an error naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["Sizes"]

_PREFIX = "ABE_CRASH_"
_FULL_RATE = 170.0
"""Messages per second of the big run: 10,000 in about a minute, as in the issue."""
_ZERO_ALLOWED = ("seed", "publish_seconds", "handler_seconds")


@dataclass(frozen=True)
class Sizes:
    """The knobs of one run; the defaults fit CI on two shared cores (about a minute a broker)."""

    messages: int = 1500
    """Numbered messages the producer publishes."""
    workers: int = 3
    """Worker processes alive at any time (a killed one is replaced at once)."""
    concurrency: int = 8
    """AsyncLoopConsumer concurrency of each worker (its prefetch is the consumer's default)."""
    max_attempts: int = 20
    """AsyncLoopConsumer max_attempts of each worker. Its guard against a message that kills
    every worker counts deliveries, and where the broker counts receipts (SQS) a message
    fetched by several workers killed in a row reaches 5 (the default) without a poison
    body: this run is about losses, so the guard gets headroom (docs/faults.md)."""
    kill_every: float = 2.0
    """Mean seconds between two SIGKILLs of a random worker, while the producer runs."""
    publish_seconds: float = 0.0
    """How long publishing takes (0: 15 s, or N / 170 s when that is longer)."""
    publishers: int = 8
    """Publishes the producer keeps in flight."""
    redelivery_timeout: float = 5.0
    """ABE_MQ_REDELIVERY_TIMEOUT of every process: when a dead worker's messages come back."""
    handler_seconds: float = 0.005
    """Work each handler call simulates before it records the message."""
    stall_after: float = 30.0
    """No new message handled for this long while confirmed ones wait: a stall (fails)."""
    drain_seconds: float = 120.0
    """Longest the run waits, once publishing ended, for every confirmed message."""
    give_up_after: float = 90.0
    """The producer stops retrying one message after this long (the run then fails)."""
    seed: int = 0
    """Seed of the killer's choices (0: a fresh one, printed with the figures)."""

    @property
    def rate(self) -> float:
        """Messages per second the producer aims at."""
        return self.messages / self.publish_duration

    @property
    def publish_duration(self) -> float:
        """Seconds the producer's schedule spans."""
        if self.publish_seconds > 0:
            return self.publish_seconds
        return max(15.0, self.messages / _FULL_RATE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Sizes:
        """Defaults overridden by ``ABE_CRASH_<FIELD>`` (``ABE_CRASH_MESSAGES=10000``...)."""
        environ = os.environ if environ is None else environ
        values: dict[str, int | float] = {}
        problems: list[str] = []
        for item in fields(cls):
            name = _PREFIX + item.name.upper()
            text = environ.get(name, "").strip()
            if not text:
                continue
            kind = int if item.type in ("int", int) else float
            try:
                value = kind(text)
            except ValueError:
                problems.append(f"{name}={text!r} is not a {'whole ' if kind is int else ''}number")
                continue
            if value < 0 or (value == 0 and item.name not in _ZERO_ALLOWED):
                problems.append(f"{name}={text!r} must be more than 0")
                continue
            values[item.name] = value
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**values)  # type: ignore[arg-type]
