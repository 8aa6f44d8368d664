"""What is still on the broker after a crash run: to say why a message was never handled.

    python -m abe_crash.inspect --backend kafka --key K --out FILE

Reads ``K`` and ``K-dlq`` each with a group of its own (a new group starts from the oldest
retained message) until nothing came for ``--idle`` seconds, and writes one JSON object
a line: which key, the message number, id and attempt, and for a dead letter its
``abe-error`` and ``abe-attempts``; and for each key how many it read and whether it read
to the end. A lost message found on ``K`` was kept by the broker but never handed to a
worker; one on neither key, read to their end, is gone from the broker. Run with the
workers' environment, after they stopped. (On SQS reading a queue takes what is left.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import IO

from abe import load_backend
from abe.backends.message_queue.base.headers import HEADER_ATTEMPTS, HEADER_ERROR
from abe.backends.message_queue.base.interface import Backend

GROUP = "crash-inspect"


async def read_key(
    backend: Backend, key: str, out: IO[str], *, first: float, idle: float, until: float
) -> None:
    """Write every message a new group reads from `key`, acknowledging each; then a line
    ``{"key": ..., "read": n, "complete": bool}``.

    Complete means the key was read to its end: messages came, then none for `idle`
    seconds. Nothing within `first` seconds (a group may take that long to join) is not
    proof of an empty key, since a consumer that cannot read sees nothing either.
    """
    which = "dead-letter" if key.endswith("-dlq") else "key"
    read, complete = 0, False
    async with backend.subscribe(group=GROUP, keys=[key]) as subscription:
        while time.monotonic() < until:
            wait = min(idle if read else first, max(0.1, until - time.monotonic()))
            try:  # test code, not provider source: wait_for is fine here
                delivery = await asyncio.wait_for(subscription.__anext__(), wait)
            except (asyncio.TimeoutError, StopAsyncIteration):
                complete = read > 0 and time.monotonic() < until
                break
            record = {
                "key": which,
                "n": delivery.payload.get("n"),
                "id": delivery.id,
                "attempt": delivery.attempt,
                "error": delivery.headers.get(HEADER_ERROR),
                "attempts": delivery.headers.get(HEADER_ATTEMPTS),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            read += 1
            await delivery.ack()
    out.write(json.dumps({"key": which, "read": read, "complete": complete}) + "\n")


async def inspect(
    backend_name: str, key: str, path: Path, *, first: float, idle: float, limit: float
) -> None:
    """Read `key` and its dead-letter key into `path`, within `limit` seconds in all."""
    until = time.monotonic() + limit
    async with load_backend(backend_name) as backend:
        with path.open("w") as out:
            for name in (f"{key}-dlq", key):  # the few dead letters first
                await read_key(backend, name, out, first=first, idle=idle, until=until)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and read both keys."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.inspect")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--first", type=float, default=30.0, help="longest wait for a first")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds with nothing: done")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds in all")
    args = parser.parse_args(argv)
    where = Path(args.out)
    times = {"first": args.first, "idle": args.idle, "limit": args.limit}
    asyncio.run(inspect(args.backend, args.key, where, **times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
