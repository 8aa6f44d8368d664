"""Read what a crash run's workers dead-lettered, to say why a message was never handled.

    python -m abe_crash.dead_letters --backend sqs --key K --out FILE

Reads ``K-dlq`` with a group of its own until nothing came for ``--idle`` seconds and
writes one JSON object a line: the message number, id, and the dead-letter headers
(``abe-error``, ``abe-attempts``). Run with the workers' environment, after they stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from abe import load_backend
from abe.backends.message_queue.base.headers import HEADER_ATTEMPTS, HEADER_ERROR


async def read(backend_name: str, key: str, out: Path, idle: float) -> None:
    """Write every dead letter of `key` to `out`, acknowledging each."""
    async with load_backend(backend_name) as backend:
        subscription = backend.subscribe(group="crash-dead-letters", keys=[f"{key}-dlq"])
        async with subscription:
            with out.open("w") as file:
                while True:
                    try:  # test code, not provider source: wait_for is fine here
                        delivery = await asyncio.wait_for(subscription.__anext__(), idle)
                    except (asyncio.TimeoutError, StopAsyncIteration):
                        return
                    record = {
                        "n": delivery.payload.get("n"),
                        "id": delivery.id,
                        "error": delivery.headers.get(HEADER_ERROR),
                        "attempts": delivery.headers.get(HEADER_ATTEMPTS),
                    }
                    file.write(json.dumps(record) + "\n")
                    file.flush()
                    await delivery.ack()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and read the dead letters."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.dead_letters")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds with nothing: done")
    args = parser.parse_args(argv)
    asyncio.run(read(args.backend, args.key, Path(args.out), args.idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
