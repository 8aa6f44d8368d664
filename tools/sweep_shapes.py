"""The payload-size and key-count sweep behind docs/benchmarks.md's "Payload sizes and key
counts": every workload at every size in an `abe bench` process of its own, merged into one
`abe bench --json` document per broker (the files in docs/benchmarks/shapes/).

A process per cell keeps one cell's backlog and heap from weighing on the next (`abe bench`
deletes its keys only when it ends); on Kafka each process gets a new Tansu broker on
memory storage, as the page says. The configured backend is used as `abe bench` would use
it (QUEUE_BACKEND and the provider's variables), except that Kafka's broker is started here:

    QUEUE_BACKEND=redis python tools/sweep_shapes.py --repeat 3 > docs/benchmarks/shapes/redis.json
    QUEUE_BACKEND=kafka python tools/sweep_shapes.py --repeat 3 > docs/benchmarks/shapes/kafka.json

Progress, one line a cell with its abe / raw ratio, goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests-integration"))
from abe_brokers import KafkaServerFactory  # the tests' own broker starters
from abe_brokers.servers import tansu_binary

SIZES = {256: 20_000, 4096: 10_000, 65_536: 4_000, 262_144: 2_000}
"""Payload bytes, and the messages a workload sends at that size (about 5 to 30 s a side)."""
DRAIN_MESSAGES = {256: 100_000}
"""Drains at 256 B take more, on one key and over 100 (docs/benchmarks.md, "Short drains at
256 B"): a backlog of 20,000 fits in two of Kafka's 4 MiB fetch responses, whose records
the raw loop handles without once giving the event loop a turn, so aiokafka's work after
each fetch fell inside abe's clock only."""
SIZE_WORKLOADS = ("publish", "publish_many", "drain", "drain_consumer", "drain_concurrent")
KEYS, KEYS_MESSAGES = 100, DRAIN_MESSAGES[256]
KEYS_WORKLOADS = ("drain", "drain_consumer", "drain_concurrent")
KAFKA_SETTINGS = {"ABE_KAFKA_IDEMPOTENT": "false", "ABE_KAFKA_SESSION_TIMEOUT": "2"}
"""As docs/benchmarks.md's Kafka runs: Tansu has no idempotent producer state to keep."""


@contextlib.contextmanager
def _kafka_broker() -> Iterator[dict[str, str]]:
    """A new Tansu broker on memory storage (tests-integration's own), as variables for abe."""
    factory = KafkaServerFactory(tansu_binary(), s3=lambda: None)  # type: ignore[arg-type,return-value]
    try:
        server = factory(storage="memory")
        yield {"KAFKA_BOOTSTRAP_SERVERS": server.bootstrap, **KAFKA_SETTINGS}
    finally:
        factory.close()


def _bench(workload: str, size: int, keys: int, messages: int, repeat: int) -> dict[str, Any]:
    """One cell: `abe bench --json` for `workload` at `size` bytes over `keys` keys."""
    kafka = os.environ.get("QUEUE_BACKEND") == "kafka"
    argv = [sys.executable, "-m", "abe", "bench", "--json", "--no-progress"]
    argv += ["--workloads", workload, "--payload-bytes", str(size), "--keys", str(keys)]
    argv += ["--messages", str(messages), "--repeat", str(repeat)]
    with _kafka_broker() if kafka else contextlib.nullcontext({}) as extra:
        done = subprocess.run(
            argv, env={**os.environ, **extra}, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:])} failed:\n{done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _cells() -> Iterator[tuple[str, int, int, int]]:
    """(workload, payload bytes, keys, messages) of every cell, sizes first, then keys."""
    for size, messages in SIZES.items():
        for workload in SIZE_WORKLOADS:
            drain = workload.startswith("drain")
            yield workload, size, 1, DRAIN_MESSAGES.get(size, messages) if drain else messages
    for workload in KEYS_WORKLOADS:
        yield workload, 256, KEYS, KEYS_MESSAGES


def sweep(repeat: int) -> dict[str, Any]:
    """Every cell, merged: the first report's header, one run per size and key count."""
    merged: dict[str, Any] | None = None
    for workload, size, keys, messages in _cells():
        started = time.monotonic()
        report = _bench(workload, size, keys, messages, repeat)
        run = report["runs"][0]
        if merged is None:
            merged = {**report, "runs": []}
            merged["settings"] = {**report["settings"], "messages": None}
        runs = merged["runs"]
        same = [r for r in runs if (r["payload_bytes"], r["keys"]) == (size, keys)]
        if same:
            same[0]["workloads"].update(run["workloads"])
        else:
            runs.append(run)
        ratio = run["workloads"][workload].get("abe_over_raw", {}).get("msgs_per_s")
        shown = f"{ratio:.3f}" if isinstance(ratio, float) else "-"
        print(
            f"{workload:>16} {size:>7} B {keys:>3} key(s): abe/raw {shown} "
            f"({time.monotonic() - started:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    assert merged is not None
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    args = parser.parse_args()
    json.dump(sweep(args.repeat), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
