"""`abe check`: one publish, read back and ack through the configured backend, with a verdict.

The probe goes to a key and group of its own (`abe-check-<hex>`), so it never touches
an application's messages, and the key is deleted afterwards. The verdict says which
step failed and what to do; it prints the backend's repr, which never holds a secret,
and no settings values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.deadlines import bounded
from abe.cli.arguments import positive_seconds
from abe.cli.connect import FALLBACK_NOTE, close_backend, delete_own_keys, load, require_base
from abe.cli.errors import EXIT_FAILURE, EXIT_OK, one_line
from abe.cli.output import note
from abe.errors import (
    AuthenticationError,
    BackendNotFoundError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = ["Verdict", "add_parser", "check", "run"]

DEFAULT_TIMEOUT = 15.0
_CLEAN_UP = 3.0
"""Most of the bound kept for deleting the probe's key and closing the backend."""


@dataclass
class Verdict:
    """The outcome of a check: passed or not, and the lines that say so."""

    ok: bool
    lines: list[str]


class _CheckFailed(Exception):
    """The round trip completed but something about it was wrong."""


class _Trace(logging.Handler):
    """Where the check is, and abe's warnings so far: failed reads and acks are only logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.step = "loading the backend"
        self.published = False
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last_warning(self) -> str | None:
        return self.records[-1].getMessage() if self.records else None


async def check(timeout: float) -> Verdict:
    """Load the backend, round-trip a probe, clean up and close, all within `timeout` seconds.

    A backend that cannot be built (unknown name, bad settings) raises: that is bad input,
    reported like every other command's (one line, exit 2), not a verdict on the broker.
    """
    trace = _Trace()
    logger = logging.getLogger("abe")
    loaded = load()
    backend = loaded.backend
    if loaded.fallback:
        note(FALLBACK_NOTE)
    base = require_base(backend, "check")
    described = repr(base)
    key = f"abe-check-{secrets.token_hex(6)}"
    deadline = time.monotonic() + timeout
    # the round trip leaves a little of the bound for deleting the probe's key and closing
    reserve = min(_CLEAN_UP, timeout / 4)
    logger.addHandler(trace)
    try:
        seconds = await bounded(_round_trip(base, key, trace), timeout - reserve)
        passed = f"OK: {base.name} round trip in {seconds * 1000:.1f} ms ({described})"
    except asyncio.TimeoutError:
        last = trace.last_warning()
        reason = f"no answer within {timeout:g} s" + (f" (last error: {last})" if last else "")
        return _failed(trace.step, reason, _hint(None))
    except Exception as exc:
        return _failed(trace.step, one_line(exc), _hint(exc))
    finally:
        logger.removeHandler(trace)
        if trace.published:
            await delete_own_keys(base, [key], max(0.1, deadline - time.monotonic()))
        await close_backend(backend, max(0.1, deadline - time.monotonic()))
    return Verdict(True, [passed])


async def _round_trip(backend: BaseBackend, key: str, trace: _Trace) -> float:
    group = key
    probe = {"abe_check": key, "sent_at": time.time()}
    trace.step = "publishing the probe"
    started = time.perf_counter()
    try:
        await backend.publish(key, probe)
    except asyncio.CancelledError:
        trace.published = True  # cut short by the deadline: the key may exist on the broker
        raise
    trace.published = True
    trace.step = "reading the probe back"
    async with backend.subscribe(group=group, keys=[key], prefetch=1) as subscription:
        delivery = await anext(subscription)
        seconds = time.perf_counter() - started
        if delivery.payload != probe:
            raise _CheckFailed(
                f"read back a different message from the new key {key!r}: {delivery.payload!r}"
            )
        trace.step = "acknowledging the probe"
        acked_from = len(trace.records)
        await delivery.ack()
    # leaving the subscription flushed the acknowledgement; a failed flush is only logged
    failures = [r for r in trace.records[acked_from:] if r.name == "abe.acks"]
    if failures:
        raise _CheckFailed(failures[-1].getMessage())
    return seconds


def _failed(step: str, reason: str, hint: str) -> Verdict:
    return Verdict(False, [f"FAILED: {step} — {reason}", f"hint: {hint}"])


def _hint(error: Exception | None) -> str:
    if error is None:
        return (
            "the broker did not answer in time: check that it is up and reachable from here, "
            "or raise --timeout if it is only slow"
        )
    if isinstance(error, ConfigurationError):
        return "set the variables named above, then run abe check again"
    if isinstance(error, BackendNotFoundError):
        return "`abe backends` shows what is installed and which one load_backend() builds"
    if isinstance(error, AuthenticationError):
        return "check the credentials the backend's variables give (`abe backends` shows which)"
    if isinstance(error, (BackendUnavailableError, OSError)):
        return (
            "check that the broker is running and reachable from here, and that the backend's "
            "address variables point at it (`abe backends` shows them)"
        )
    if isinstance(error, (PayloadError, InvalidKeyError)):
        return "the backend refused abe's probe; please report it to the backend's maintainers"
    return "rerun with --debug for the full traceback"


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe check`."""
    parser = commands.add_parser(
        "check",
        help="round-trip a probe message through the configured backend",
        description=(
            "Build the backend load_backend() gives, publish a probe to a new key "
            "abe-check-<hex>, read it back in a new group, acknowledge it, delete the key, "
            "and say whether that worked, all within --timeout. Exit 0 when it did, 1 when "
            "the broker failed (a verdict on stdout), 2 when the backend cannot be built "
            "(one line on stderr)."
        ),
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"the whole check, clean-up included, takes at most this long (default "
        f"{DEFAULT_TIMEOUT:g})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the verdict on stdout; exit 0 when the round trip worked, else 1."""
    verdict = asyncio.run(check(args.timeout))
    print("\n".join(verdict.lines), flush=True)
    return EXIT_OK if verdict.ok else EXIT_FAILURE
