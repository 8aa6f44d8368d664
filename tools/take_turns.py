"""One `abe bench` workload, abe against the raw baseline, taking turns in one process.

`abe bench` runs each side a few times; on a 2-core machine single runs of one cell move
by 10 to 30%, so telling a gap from noise takes many short runs. This runs the workload's
own methods (abe's `AbeWorkloads` and the provider's `RawBaseline`) one after the other,
`--rounds` times on new keys, the raw side first in every second round, and prints each
side's rates, their medians and their ratio, and the CPU time per message (for the drains
it includes publishing the backlog). docs/benchmarks.md cites it:

    QUEUE_BACKEND=redis python tools/take_turns.py --workload drain_concurrent --payload-bytes 65536
    QUEUE_BACKEND=nats python tools/take_turns.py --workload publish --messages 3000

The keys it made are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from abe import load_backend
from abe.benchmarking import RAW_WORKLOADS, WORKLOADS, AbeWorkloads, Workload
from abe.provider import BaseBackend


def _no_progress(done: int) -> None:
    """`abe bench` shows progress; this tool prints when every round is done."""


async def main(workload: str, payload_bytes: int, messages: int, rounds: int) -> None:
    run_id = f"abe-turns-{secrets.token_hex(4)}"
    keys: list[str] = []
    async with load_backend() as backend:
        assert isinstance(backend, BaseBackend)
        raw = backend.raw_baseline()
        if raw is None:
            raise SystemExit(f"the {backend.name} backend has no raw baseline")
        sides = {
            "abe": getattr(AbeWorkloads(backend), workload),
            raw.name: getattr(raw, RAW_WORKLOADS[workload]),
        }
        rates: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        try:
            for number in range(rounds):
                order = list(sides) if number % 2 == 0 else list(sides)[::-1]
                for side in order:
                    key = f"{run_id}-{number}-{'abe' if side == 'abe' else 'raw'}"
                    keys.append(key)
                    run = Workload(
                        messages=messages,
                        payload_bytes=payload_bytes,
                        batch_size=100,
                        key=key,
                        group=f"{key}-group",
                        keys=(key,),
                    )
                    started = time.process_time()
                    measured = await sides[side](run, _no_progress)
                    cpu[side].append((time.process_time() - started) / messages * 1e6)
                    rates[side].append(measured.messages / measured.seconds)
        finally:
            await raw.close()
            await backend.delete_keys(keys)
    for side in sides:
        shown = ", ".join(f"{rate:,.0f}" for rate in rates[side])
        print(
            f"{side}: {shown} msgs/s; median {statistics.median(rates[side]):,.0f}; "
            f"CPU {statistics.median(cpu[side]):.1f} us a message"
        )
    abe, baseline = (statistics.median(rates[side]) for side in sides)
    print(f"abe / raw, medians: {abe / baseline:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, default="publish")
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.workload, args.payload_bytes, args.messages, args.rounds))
