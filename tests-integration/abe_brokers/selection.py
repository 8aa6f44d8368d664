"""The resolution order and the skip-or-fail decision, kept free of pytest and of I/O.

Each broker kind is tried through a list of steps (env, running, container, process);
the first that yields a broker wins. When none does, the kind is skipped with the
reasons, or failed when ``ABE_REQUIRE_BROKERS`` names it. An address given in the
environment that does not answer always fails: it is a misconfiguration, and quietly
testing against some other broker would hide it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from .model import CLUSTER_KINDS, KINDS, Kind

REQUIRE_VAR = "ABE_REQUIRE_BROKERS"

T = TypeVar("T")


class StepSkipped(Exception):
    """A step found nothing (no variable set, nothing listening, no engine); try the next one."""


class EnvAddressUnusable(Exception):
    """An address given in the environment did not work; resolution stops and fails."""


def required_kinds(value: str | None) -> frozenset[Kind]:
    """Parse ``ABE_REQUIRE_BROKERS``: kinds (``redis``, ``abe-mq-redis``, ``nats-cluster``), all.

    An unknown name is an error rather than ignored, so a typo cannot turn a required
    broker into a silently skipped one.
    """
    known_kinds = (*KINDS, *CLUSTER_KINDS)
    kinds: set[Kind] = set()
    for raw in (value or "").split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            return frozenset(known_kinds)
        name = name.removeprefix("abe-mq-").removeprefix("abe_mq_")
        matched = [kind for kind in known_kinds if kind == name]
        if not matched:
            known = ", ".join(("all", *known_kinds))
            raise ValueError(f"{REQUIRE_VAR}: unknown broker {raw.strip()!r} (known: {known})")
        kinds.add(matched[0])
    return frozenset(kinds)


@dataclass(frozen=True)
class Attempt:
    """What one step did: ``ok``, ``skipped`` (nothing there) or ``failed`` (tried and broke)."""

    step: str
    outcome: Literal["ok", "skipped", "failed"]
    reason: str
    seconds: float


@dataclass(frozen=True)
class Resolution(Generic[T]):
    """The verdict for one kind: ``ok`` with a value, or ``skip``/``fail`` with a message."""

    kind: Kind
    verdict: Literal["ok", "skip", "fail"]
    value: T | None = None
    message: str = ""
    attempts: tuple[Attempt, ...] = field(default=())

    @property
    def seconds(self) -> float:
        """Total time the steps took."""
        return sum(a.seconds for a in self.attempts)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, StepSkipped | EnvAddressUnusable):
        return text
    return f"{type(exc).__name__}: {text}"


def unavailable(kind: Kind, reasons: str, *, required: bool) -> Resolution[T]:
    """The verdict when ``kind`` cannot be had: ``fail`` if required, else ``skip``."""
    if required:
        return Resolution(
            kind, "fail", message=f"{reasons} [{REQUIRE_VAR} requires {kind}, so this fails]"
        )
    return Resolution(
        kind, "skip", message=f"{reasons} [set {REQUIRE_VAR}={kind} to fail instead of skipping]"
    )


def resolve(
    kind: Kind, steps: Sequence[tuple[str, Callable[[], T]]], *, required: bool
) -> Resolution[T]:
    """Run ``steps`` in order until one returns a value; decide skip or fail when none does.

    A step raises :class:`StepSkipped` when it finds nothing, :class:`EnvAddressUnusable`
    to stop the search (a dead address given in the environment), and anything else
    when it tried and broke; either of the first and last moves on to the next step.
    """
    attempts: list[Attempt] = []
    for name, step in steps:
        started = time.monotonic()
        try:
            value = step()
        except EnvAddressUnusable as exc:
            attempts.append(Attempt(name, "failed", _describe(exc), time.monotonic() - started))
            return Resolution(
                kind,
                "fail",
                message=f"{kind}: {_describe(exc)} (an address given in the environment must work;"
                " unset the variable to let the fixtures find or start a broker)",
                attempts=tuple(attempts),
            )
        except StepSkipped as exc:
            attempts.append(Attempt(name, "skipped", _describe(exc), time.monotonic() - started))
            continue
        except Exception as exc:
            attempts.append(Attempt(name, "failed", _describe(exc), time.monotonic() - started))
            continue
        attempts.append(Attempt(name, "ok", "", time.monotonic() - started))
        return Resolution(kind, "ok", value=value, attempts=tuple(attempts))
    reasons = f"no {kind} broker: " + "; ".join(f"{a.step}: {a.reason}" for a in attempts)
    verdict: Resolution[T] = unavailable(kind, reasons, required=required)
    return Resolution(kind, verdict.verdict, message=verdict.message, attempts=tuple(attempts))
