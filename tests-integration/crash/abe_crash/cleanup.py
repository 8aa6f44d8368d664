"""Delete a crash run's key (and its dead-letter key) from a shared broker.

    python -m abe_crash.cleanup --backend sqs --key K

Run with the same environment as the workers, so that it reaches the same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from abe import load_backend


async def clean(backend_name: str, key: str) -> None:
    """Delete `key` and `key`-dlq, and the groups on them."""
    async with load_backend(backend_name) as backend:
        await backend.delete_keys([key])


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and delete the key."""
    parser = argparse.ArgumentParser(prog="python -m abe_crash.cleanup")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    asyncio.run(clean(args.backend, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
