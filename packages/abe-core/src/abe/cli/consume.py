"""`abe consume KEY...`: print each message as one JSON line, acknowledging it once printed.

It stops after `--count` messages, after `--timeout` seconds without one, or on Ctrl-C /
SIGTERM; in every case it flushes the acknowledgements and closes the backend. A message
that could not be printed (say, the pipe closed) is given back, not acknowledged.

A tool for looking at queues leaves nothing behind: it never creates a key (keys the
broker does not have are refused), and without `--group` it reads in a temporary group
that it deletes when it stops, as kombu's tools read through auto-delete queues.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
from collections.abc import Iterator, Sequence

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.subscription import Subscription
from abe.cli.arguments import positive_int, positive_seconds
from abe.cli.connect import (
    FALLBACK_NOTE,
    close_backend,
    delete_own_group,
    load,
    require_base,
)
from abe.cli.errors import EXIT_FAILURE, EXIT_OK
from abe.cli.output import note

__all__ = ["add_parser", "consume", "format_delivery", "run"]


def format_delivery(delivery: Delivery, *, show_meta: bool) -> str:
    """The payload as one JSON line; with `show_meta`, wrapped with key, id, attempt, headers."""
    if not show_meta:
        return json.dumps(delivery.payload, ensure_ascii=False)
    return json.dumps(
        {
            "key": delivery.key,
            "id": delivery.id,
            "attempt": delivery.attempt,
            "headers": dict(delivery.headers),
            "payload": delivery.payload,
        },
        ensure_ascii=False,
    )


class _Stop:
    """Ends the subscription once asked to, remembering why (the first reason wins)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._asked = asyncio.Event()

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._asked.set()

    async def apply_to(self, subscription: Subscription) -> None:
        await self._asked.wait()
        await subscription.stop()


@contextlib.contextmanager
def _on_signals(stop: _Stop) -> Iterator[None]:
    """SIGINT and SIGTERM ask `stop` to end the run, instead of raising in the middle of it."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum, reason in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
        try:
            loop.add_signal_handler(signum, stop.request, reason)
        except (NotImplementedError, RuntimeError):  # not on this platform or thread
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def consume(
    keys: Sequence[str],
    *,
    group: str | None,
    count: int | None,
    timeout: float | None,
    show_meta: bool,
) -> int:
    """Print and acknowledge messages until a stop condition; returns the exit code."""
    stop = _Stop()
    received = 0
    loaded = load()
    if loaded.fallback:
        note(FALLBACK_NOTE)
    try:
        backend = require_base(loaded.backend, "consume")
        _say_what_it_reads(backend)
        keys = await _existing(backend, keys)
        if not keys:
            return EXIT_FAILURE
        temporary = group is None
        group = group or f"abe-consume-{secrets.token_hex(4)}"
        prefetch = min(count, backend.settings.prefetch) if count else None
        subscription = backend.subscribe(group=group, keys=keys, prefetch=prefetch)
        with _on_signals(stop):
            async with subscription:
                note(
                    f"abe consume: reading {', '.join(subscription.keys)} as group {group} on "
                    f"{backend.name} (Ctrl-C to stop)"
                )
                received = await _print_until_stopped(
                    subscription, stop, count=count, timeout=timeout, show_meta=show_meta
                )
        if temporary:
            await delete_own_group(backend, group, subscription.keys)
    finally:
        await close_backend(loaded.backend)
    return _report(received, count, timeout, stop.reason)


def _say_what_it_reads(backend: BaseBackend) -> None:
    """Notes on what reading takes or misses on this backend, before it starts."""
    if not backend.capabilities.remote:
        note(
            f"note: the {backend.name} backend keeps messages inside one process, so this "
            f"reads only what this process publishes"
        )
    if not backend.capabilities.fan_out:
        note(
            f"note: {backend.name} has no fan-out: what this reads is taken away from "
            f"the other consumers of these keys"
        )


async def _print_until_stopped(
    subscription: Subscription,
    stop: _Stop,
    *,
    count: int | None,
    timeout: float | None,
    show_meta: bool,
) -> int:
    """Print and acknowledge each delivery until `count`, `timeout` idle or a stop; how many."""
    loop = asyncio.get_running_loop()
    received = 0
    stopper = loop.create_task(stop.apply_to(subscription))
    idle = None if timeout is None else loop.call_later(timeout, stop.request, "idle")
    try:
        async for delivery in subscription:
            if idle is not None:
                idle.cancel()
            try:
                print(format_delivery(delivery, show_meta=show_meta), flush=True)
            except BaseException:
                await delivery.nack()
                raise
            await delivery.ack()
            received += 1
            if count is not None and received >= count:
                stop.request("count")
                break
            if timeout is not None:
                idle = loop.call_later(timeout, stop.request, "idle")
    finally:
        if idle is not None:
            idle.cancel()
        if stop.reason is None:  # ended by an error: nothing is stopping it
            stopper.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
    return received


async def _existing(backend: BaseBackend, keys: Sequence[str]) -> list[str]:
    """The keys the broker has (all of them when it cannot tell), saying which it has not."""
    try:
        found = await backend.existing_keys(keys)
    except NotImplementedError:
        return list(keys)
    missing = [key for key in keys if key not in found]
    if missing:
        names = ", ".join(missing)
        verb = "does" if len(missing) == 1 else "do"
        note(
            f"abe consume: {names} {verb} not exist on {backend.name}; abe consume does not "
            f"create keys (check the name, or publish first)"
        )
    return found


def _report(received: int, count: int | None, timeout: float | None, reason: str | None) -> int:
    if reason == "count":
        why = f"--count {count} reached"
    elif reason == "idle":
        why = f"no message for {timeout:g} s"
    else:
        why = reason or "the subscription ended"
    noun = "message" if received == 1 else "messages"
    note(f"abe consume: {received} {noun}; stopped: {why}")
    if count is not None and received < count and reason == "idle":
        wanted = "message" if count == 1 else "messages"
        note(f"abe consume: expected {count} {wanted}, got {received}")
        return EXIT_FAILURE
    return EXIT_OK


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe consume`."""
    parser = commands.add_parser(
        "consume",
        help="print messages of keys as JSON lines, acknowledging each",
        description=(
            "Read KEY... in a consumer group and print each payload as one JSON line, "
            "acknowledging it after it is printed. Stops after --count messages, after "
            "--timeout seconds without a message, or on Ctrl-C / SIGTERM (exit 0). "
            "With --count, getting fewer before --timeout exits 1."
        ),
    )
    parser.add_argument("keys", nargs="+", metavar="KEY", help="the keys to read")
    parser.add_argument(
        "--group",
        metavar="G",
        help=(
            "the consumer group (default: a temporary group of its own, deleted when it stops, "
            "which reads every retained message without taking any from other groups, on "
            "brokers with fan-out)"
        ),
    )
    parser.add_argument("--count", type=positive_int, metavar="N", help="stop after N messages")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop after this long without a message (default: wait until interrupted)",
    )
    parser.add_argument(
        "--show-meta",
        action="store_true",
        help="print {key, id, attempt, headers, payload} instead of the payload alone",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Consume until a stop condition."""
    return asyncio.run(
        consume(
            args.keys,
            group=args.group,
            count=args.count,
            timeout=args.timeout,
            show_meta=args.show_meta,
        )
    )
