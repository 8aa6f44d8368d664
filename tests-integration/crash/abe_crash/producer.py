"""The producer of a crash run: publishes messages 0..N-1 at a steady rate, each confirmed.

    python -m abe_crash.producer --backend redis --key K --messages N --rate R --out FILE

The backend comes from the environment (``load_backend``). Message ``n`` has the payload
``{"n": n}`` and the id ``m-n`` on every attempt; a publish that raises is retried with
that same id until it returns (then its line goes to FILE) or ``--give-up`` seconds
have passed (then the process exits with status 3 and says which message).

On Kafka each attempt also appends ``number attempt partition offset`` (what the broker
answered, ``-`` and the error when it failed) to FILE's ``placed-kafka.log`` sibling: two
records the broker placed at the same offset show an overwrite by the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import itertools
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from abe import load_backend
from abe.backends.message_queue.base.interface import Backend
from abe.errors import ConfigurationError, InvalidKeyError, PayloadError
from abe_crash.records import Confirmed, LineWriter, message_id

log = logging.getLogger("abe_crash.producer")

_RETRY_FIRST = 0.1
_RETRY_MAX = 2.0
_NEVER_RETRIED = (ConfigurationError, InvalidKeyError, PayloadError)
"""Bad input: retrying cannot help, the run is broken."""


_ATTEMPT: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("attempt")
"""The message number and attempt the running publish is for (read by the Kafka observer)."""


def observe_kafka_placements(path: Path) -> LineWriter:
    """Append where the broker put each record aiokafka's ``send_and_wait`` sent (this
    process only: the answer is read, nothing about it changes)."""
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    placed = LineWriter(path)
    send_and_wait = AIOKafkaProducer.send_and_wait

    async def observed(self: object, *args: object, **kwargs: object) -> object:
        number, attempt = _ATTEMPT.get((-1, 0))
        try:
            metadata = await send_and_wait(self, *args, **kwargs)
        except BaseException as exc:
            placed.write(f"{number} {attempt} - - {type(exc).__name__}\n")
            raise
        placed.write(f"{number} {attempt} {metadata.partition} {metadata.offset}\n")
        return metadata

    AIOKafkaProducer.send_and_wait = observed
    return placed


class GaveUp(Exception):
    """One message could not be published within the give-up time."""


async def publish_until_confirmed(backend: Backend, key: str, number: int, give_up: float) -> int:
    """Publish message `number` until publish() returns; the number of attempts it took."""
    started = time.monotonic()
    for attempt in itertools.count(1):
        _ATTEMPT.set((number, attempt))
        try:
            await backend.publish(key, {"n": number}, message_id=message_id(number))
        except _NEVER_RETRIED:
            raise
        except Exception as exc:
            waited = time.monotonic() - started
            if waited > give_up:
                raise GaveUp(
                    f"message {message_id(number)} not confirmed after {attempt} attempts in "
                    f"{waited:.0f}s; last error {type(exc).__name__}: {exc}"
                ) from exc
            log.warning(
                "publish of %s failed on attempt %d (%s: %s); retrying with the same id",
                message_id(number),
                attempt,
                type(exc).__name__,
                exc,
            )
            # a back-off before the retry, not a wait for an event
            await asyncio.sleep(min(_RETRY_MAX, _RETRY_FIRST * 2 ** (attempt - 1)))
        else:
            return attempt
    raise AssertionError("unreachable")


async def produce(args: argparse.Namespace) -> None:
    """Publish every message on schedule with `args.publishers` publishes in flight."""
    out = LineWriter(Path(args.out))
    if args.backend == "kafka":
        observe_kafka_placements(Path(args.out).with_name("placed-kafka.log"))
    numbers: Iterator[int] = iter(range(args.messages))
    backend = load_backend(args.backend)
    start = time.monotonic()

    async def publisher() -> None:
        for number in numbers:  # shared: each number goes to one publisher
            delay = start + number / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule's pace, not a wait for an event
            started = time.monotonic()
            attempts = await publish_until_confirmed(backend, args.key, number, args.give_up)
            out.write(Confirmed(number, attempts, time.monotonic(), started).line())

    try:
        async with backend:
            await asyncio.gather(*(publisher() for _ in range(args.publishers)))
    finally:
        out.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and publish; 0 when every message was confirmed, 3 on give-up."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.producer")
    parser.add_argument("--backend", required=True, help="backend name for load_backend()")
    parser.add_argument("--key", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--publishers", type=int, default=8, help="publishes in flight")
    parser.add_argument("--give-up", type=float, default=90.0, help="seconds per message")
    parser.add_argument("--out", required=True, help="file of confirmed publishes")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(produce(args))
    except GaveUp as exc:
        log.error("giving up: %s", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
