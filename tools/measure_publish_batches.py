"""Where `publish_many` of large payloads spends its time, abe against the raw client.

For each side in turn (abe's `publish_many` workload and the provider's raw baseline, the
raw one first in every second round, `--rounds` times on new keys), the rate and two counts
from the kernel over the timed region: page faults per batch (`ru_minflt`) and the share of
the wall time the process was on the CPU (`process_time() / wall`). A side that faults far
more is paying the C allocator; one that is off the CPU more is waiting on the broker
instead of overlapping with it. Issue 20 and docs/benchmarks.md ("Payload sizes and key
counts") cite it:

    QUEUE_BACKEND=kafka ABE_KAFKA_IDEMPOTENT=false python tools/measure_publish_batches.py
    QUEUE_BACKEND=nats python tools/measure_publish_batches.py --payload-bytes 65536

Prints one JSON line per round and side. The keys it made are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import time

from abe import load_backend
from abe.benchmarking import AbeWorkloads, RawBaseline, Workload
from abe.provider import BaseBackend


def _no_progress(done: int) -> None:
    """`abe bench` shows progress; this tool prints when a side is done."""


async def _measured(
    side: str, run: Workload, work: AbeWorkloads | RawBaseline, batches: int
) -> dict[str, object]:
    """Run one side's publish_many on `run`; its rate, faults per batch and CPU share."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, wall = time.process_time(), time.perf_counter()
    measurement = await work.publish_many(run, _no_progress)
    wall = time.perf_counter() - wall
    return {
        "side": side,
        "msgs_per_s": round(measurement.messages / measurement.seconds),
        "faults_per_batch": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / batches
        ),
        "cpu_share": round((time.process_time() - cpu) / wall, 2),
    }


async def main(payload_bytes: int, messages: int, batch_size: int, rounds: int) -> None:
    run_id = f"abe-measure-{secrets.token_hex(4)}"
    keys: list[str] = []
    async with load_backend() as backend:
        assert isinstance(backend, BaseBackend)
        raw: RawBaseline | None = backend.raw_baseline()
        sides: list[tuple[str, AbeWorkloads | RawBaseline]] = [("abe", AbeWorkloads(backend))]
        sides += [(raw.name, raw)] if raw is not None else []
        batches = -(-messages // batch_size)
        try:
            for number in range(rounds):
                for side, work in sides if number % 2 == 0 else sides[::-1]:
                    key = f"{run_id}-{number}-{'abe' if side == 'abe' else 'raw'}"
                    keys.append(key)
                    run = Workload(
                        messages=messages,
                        payload_bytes=payload_bytes,
                        batch_size=batch_size,
                        key=key,
                        group=f"{key}-group",
                    )
                    result = await _measured(side, run, work, batches)
                    print(json.dumps({"round": number, "payload_bytes": payload_bytes, **result}))
        finally:
            if raw is not None:
                await raw.close()
            await backend.delete_keys(keys)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload-bytes", type=int, default=262_144)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(
        main(arguments.payload_bytes, arguments.messages, arguments.batch_size, arguments.rounds)
    )
