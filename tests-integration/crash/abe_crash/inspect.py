"""What is still on the broker after a crash run: to say why a message was never handled.

    python -m abe_crash.inspect --backend kafka --key K --out FILE

Reads ``K`` and ``K-dlq`` each with a group of its own (a new group starts from the oldest
retained message) until nothing came for ``--idle`` seconds, and writes one JSON object
a line: which key, the message number, id and attempt, and for a dead letter its
``abe-error`` and ``abe-attempts``; and for each key read to its end, a line saying so.
A lost message found on ``K`` was kept by the broker but never handed to a worker; one
on neither key, both read to their end, is gone from the broker. Run with the
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


async def read_key(backend: Backend, key: str, out: IO[str], idle: float, until: float) -> None:
    """Write every message a new group reads from `key`, acknowledging each; then a line
    ``{"key": ..., "complete": true}`` if nothing more came for `idle` seconds before `until`."""
    which = "dead-letter" if key.endswith("-dlq") else "key"
    async with backend.subscribe(group=GROUP, keys=[key]) as subscription:
        while time.monotonic() < until:
            try:  # test code, not provider source: wait_for is fine here
                delivery = await asyncio.wait_for(subscription.__anext__(), idle)
            except (asyncio.TimeoutError, StopAsyncIteration):
                out.write(json.dumps({"key": which, "complete": True}) + "\n")
                return
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
            await delivery.ack()


async def inspect(backend_name: str, key: str, path: Path, idle: float, limit: float) -> None:
    """Read `key` and its dead-letter key into `path`, within `limit` seconds in all."""
    until = time.monotonic() + limit
    async with load_backend(backend_name) as backend:
        with path.open("w") as out:
            await read_key(backend, f"{key}-dlq", out, idle, until)  # the few first
            await read_key(backend, key, out, idle, until)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and read both keys."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.inspect")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--idle", type=float, default=8.0, help="seconds with nothing: done")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds in all")
    args = parser.parse_args(argv)
    asyncio.run(inspect(args.backend, args.key, Path(args.out), args.idle, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
