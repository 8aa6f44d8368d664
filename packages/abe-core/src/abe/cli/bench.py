"""`abe bench`: throughput and latency of the configured backend, beside its raw client if any.

The workloads are those of `abe.benchmarking` (publish, publish_many, end_to_end and the
drains), each on fresh keys and a fresh group, for each shape asked for: payload sizes
(`--payload-bytes 256,4096,65536`) times key counts (`--keys 1,100`). When the backend's
`raw_baseline()` gives one, the same workloads also run through the broker's client
library, on the same broker, and the report shows abe/raw. Every key the run made is
deleted at the end. Progress goes to stderr; the result to stdout as tables or, with
`--json`, as one JSON document whose keys are stable (docs chart them):

    {
      "schema": "abe-bench/2",
      "backend": {"name": "memory", "distribution": "abe-core", "version": "0.1.0"},
      "abe_version": "0.1.0",
      "python": "3.11.7",
      "python_implementation": "CPython",
      "platform": "Linux-6.1.0-x86_64-with-glibc2.36",
      "started_at": "2025-01-31T12:00:00Z",
      "settings": {"messages": 2000, "batch_size": 100, "concurrency": 16, "timeout": 30.0,
                   "repeat": 1},
      "raw_client": {"status": "none", "name": null},
      "runs": [
        {"payload_bytes": 256, "keys": 1, "workloads": {
          "publish": {MEASUREMENT..., "raw": MEASUREMENT | null, "abe_over_raw": RATIOS | null},
          "publish_many": {...}, "end_to_end": {...},
          "drain": {...}, "drain_consumer": {...}, "drain_concurrent": {...}
        }}
      ]
    }

    MEASUREMENT = "messages": int, "seconds": float, "msgs_per_s": float,
                  "p50_ms": float, "p99_ms": float
    RATIOS      = {"msgs_per_s": float, "p50_ms": float, "p99_ms": float}   (abe value / raw value)

With `--repeat N` (N > 1), abe and the raw client take turns N times per workload (the raw
client going first in every second run, so neither side always meets a fresher broker); each
side reports its median run, the msgs_per_s ratio is the median of the N runs' ratios,
and the entry adds "runs": [{"msgs_per_s": float, "raw_msgs_per_s": float | null}, ...].

`raw_client.status` is "measured" (a baseline ran; `name` is the client library),
"none" (the backend has no raw baseline: "no raw client") or "skipped"
(`--skip-baseline`); a baseline without the drains gives `"raw": null` for them. Latency
is per call for publish, per batch call for publish_many, per message (publish to
receive) for end_to_end, and between two messages handled for the drains, whose rate is
(N - 1) / (last handled - first handled). A msgs_per_s ratio below 1, or a latency ratio
above 1, is what abe costs over the raw client.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import platform
import secrets
import statistics
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TextIO

from abe._version import __version__
from abe.backends.message_queue.base.backend import BaseBackend
from abe.benchmarking import (
    MIN_PAYLOAD_BYTES,
    RAW_WORKLOADS,
    WORKLOADS,
    AbeWorkloads,
    Measurement,
    Progress,
    RawBaseline,
    Workload,
)
from abe.cli.arguments import at_least, positive_int, positive_seconds
from abe.cli.connect import (
    CLOSE_TIMEOUT,
    FALLBACK_NOTE,
    close_backend,
    delete_own_keys,
    load,
    origin_of,
    require_base,
)
from abe.cli.errors import EXIT_OK, CommandError, one_line
from abe.cli.output import format_count, format_ms, format_rate, note, table
from abe.cli.progress import ProgressLine

__all__ = ["SCHEMA", "BenchOptions", "add_parser", "render_table", "run", "run_bench"]

SCHEMA = "abe-bench/2"

log = logging.getLogger("abe.cli")

_Side = Callable[[Workload, Progress], Coroutine[Any, Any, Measurement]]


@dataclass(frozen=True)
class BenchOptions:
    """The settings of one `abe bench` run."""

    messages: int = 10_000
    payload_bytes: tuple[int, ...] = (256,)
    keys: tuple[int, ...] = (1,)
    batch_size: int = 100
    concurrency: int = 16
    timeout: float = 30.0
    skip_baseline: bool = False
    workloads: tuple[str, ...] = WORKLOADS
    repeat: int = 1
    """Runs of each workload (abe and raw taking turns); the report gives the medians."""

    def workload(self, keys: tuple[str, ...], group: str, payload_bytes: int) -> Workload:
        """These settings for one workload run on `keys` and `group`."""
        return Workload(
            messages=self.messages,
            payload_bytes=payload_bytes,
            batch_size=self.batch_size,
            key=keys[0],
            group=group,
            keys=keys,
            concurrency=self.concurrency,
        )


async def run_bench(options: BenchOptions, progress: TextIO | None) -> dict[str, Any]:
    """Measure the configured backend (and its raw baseline); the report as a JSON-ready dict.

    `progress` is the stream for the progress display (stderr), or None for none.
    """
    started_at = _now()
    loaded = load()
    if loaded.fallback:
        note(FALLBACK_NOTE)
    baseline: RawBaseline | None = None
    run_keys: list[str] = []  # every key this run makes, deleted at the end
    try:
        backend = require_base(loaded.backend, "bench")
        distribution, version = origin_of(backend.name)
        status = "skipped" if options.skip_baseline else "none"
        if not options.skip_baseline:
            baseline = backend.raw_baseline()
            status = "measured" if baseline is not None else "none"
        run_id = f"abe-bench-{secrets.token_hex(4)}"
        run_keys.append(f"{run_id}-warmup")
        await _warm_up(backend, run_keys[0], options.timeout)
        runs = []
        for shape, (size, count) in enumerate(
            (size, count) for size in options.payload_bytes for count in options.keys
        ):
            shaped = Shape(run_id, shape, size, count)
            workloads = await _run_shape(
                backend, baseline, options, shaped, run_keys=run_keys, progress=progress
            )
            runs.append({"payload_bytes": size, "keys": count, "workloads": workloads})
    finally:
        if baseline is not None:
            await _close_baseline(baseline)
        if isinstance(loaded.backend, BaseBackend) and run_keys:
            await delete_own_keys(loaded.backend, run_keys, max(CLOSE_TIMEOUT, len(run_keys) / 10))
        await close_backend(loaded.backend)
    return {
        "schema": SCHEMA,
        "backend": {"name": backend.name, "distribution": distribution, "version": version},
        "abe_version": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "started_at": started_at,
        "settings": {
            "messages": options.messages,
            "batch_size": options.batch_size,
            "concurrency": options.concurrency,
            "timeout": options.timeout,
            "repeat": options.repeat,
        },
        "raw_client": {"status": status, "name": baseline.name if baseline is not None else None},
        "runs": runs,
    }


@dataclass(frozen=True)
class Shape:
    """One payload size and key count of a run, and how its keys are named."""

    run_id: str
    index: int
    payload_bytes: int
    keys: int

    def keys_for(self, side: str, workload: str, repeat: int = 0) -> tuple[str, ...]:
        """Fresh keys for one side ("abe" or "raw") of one run of one workload."""
        slug = workload.replace("_", "-")
        prefix = f"{self.run_id}-{self.index}-{side}-{slug}-{repeat}"
        return tuple(f"{prefix}-{number}" for number in range(self.keys))

    def label(self) -> str:
        """How the progress lines name this shape."""
        return f"~{self.payload_bytes} B, {self.keys} key{'s' if self.keys != 1 else ''}"


async def _run_shape(
    backend: BaseBackend,
    baseline: RawBaseline | None,
    options: BenchOptions,
    shape: Shape,
    *,
    run_keys: list[str],
    progress: TextIO | None,
) -> dict[str, Any]:
    """Every workload of one shape, abe's side and the raw client's, `repeat` times each."""
    abe_side = AbeWorkloads(backend)
    workloads: dict[str, Any] = {}
    for name in options.workloads:
        raw_side = getattr(baseline, RAW_WORKLOADS[name], None) if baseline else None
        pairs: list[tuple[Measurement, Measurement | None]] = []
        for repeat in range(options.repeat):
            group = f"{shape.run_id}-{shape.index}-{name}-{repeat}"
            keys = shape.keys_for("abe", name, repeat)
            run_keys.extend(keys)
            label = f"{name} (abe, {shape.label()}{_nth(repeat, options.repeat)})"
            workload = options.workload(keys, group, shape.payload_bytes)
            abe_run = _measure(getattr(abe_side, name), workload, label, options.timeout, progress)
            raw_run = None
            if baseline is not None and raw_side is not None:
                raw_keys = shape.keys_for("raw", name, repeat)
                run_keys.extend(raw_keys)
                workload = options.workload(raw_keys, f"{group}-raw", shape.payload_bytes)
                label = f"{shape.label()}{_nth(repeat, options.repeat)}"
                raw_run = _measure_raw(
                    baseline,
                    name,
                    raw_side,
                    workload,
                    label,
                    timeout=options.timeout,
                    stream=progress,
                )
            measured, raw = await _in_turn(abe_run, raw_run, raw_first=repeat % 2 == 1)
            pairs.append((measured, raw))
        workloads[name] = _entry(pairs)
    return workloads


async def _in_turn(
    abe_run: Coroutine[Any, Any, Measurement],
    raw_run: Coroutine[Any, Any, Measurement] | None,
    *,
    raw_first: bool,
) -> tuple[Measurement, Measurement | None]:
    """Run both sides one after the other, the raw client first when `raw_first`: a broker
    that slows (or warms) as a run goes on then favours neither side over the repeats."""
    if raw_run is None:
        return await abe_run, None
    first, second = (raw_run, abe_run) if raw_first else (abe_run, raw_run)
    try:
        done = await first
    except BaseException:
        second.close()  # never started: nothing to wait for
        raise
    other = await second
    return (other, done) if raw_first else (done, other)


def _nth(repeat: int, repeats: int) -> str:
    return f", run {repeat + 1} of {repeats}" if repeats > 1 else ""


async def _warm_up(backend: BaseBackend, key: str, timeout: float) -> None:
    """One publish before any clock starts, so that no workload pays for connecting."""
    try:
        await asyncio.wait_for(backend.publish(key, {"warmup": True}), timeout)
    except asyncio.TimeoutError:
        raise CommandError(
            f"the first publish did not complete within {timeout:g} s; is the broker up? "
            f"(`abe check` says more)"
        ) from None


async def _close_baseline(baseline: RawBaseline) -> None:
    try:
        await asyncio.wait_for(baseline.close(), CLOSE_TIMEOUT)
    except Exception as exc:
        log.warning(
            "closing the raw baseline %s failed (%s: %s)", baseline.name, type(exc).__name__, exc
        )


async def _measure(
    side: _Side, workload: Workload, label: str, timeout: float, stream: TextIO | None
) -> Measurement:
    """Run one workload with a progress line; cancel it once it stops making progress."""
    line = ProgressLine(stream, label, workload.messages)
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done = count
        line(count)

    task = asyncio.get_running_loop().create_task(side(workload, progress))
    seen = 0
    try:
        while not (await asyncio.wait({task}, timeout=timeout))[0]:
            if done == seen:
                raise CommandError(
                    f"{label} made no progress for {timeout:g} s, after {done:,} of "
                    f"{workload.messages:,} messages; is the broker up? (--timeout changes "
                    f"how long to wait)"
                )
            seen = done
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    measured = task.result()
    line.finish(f"{format_rate(measured.msgs_per_s)} msgs/s in {measured.seconds:.2f} s")
    return measured


async def _measure_raw(
    baseline: RawBaseline, name: str, side: _Side, workload: Workload, label: str, **how: Any
) -> Measurement:
    try:
        return await _measure(side, workload, f"{name} ({baseline.name}, {label})", **how)
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(
            f"the raw baseline {baseline.name} failed in {name}: {one_line(exc)}; "
            f"rerun with --skip-baseline to measure abe alone"
        ) from exc


def _entry(pairs: list[tuple[Measurement, Measurement | None]]) -> dict[str, Any]:
    """The median run of each side, and the median of the ratios of the runs taken in turn."""
    measured = _median([abe for abe, _ in pairs])
    raws = [raw for _, raw in pairs if raw is not None]
    entry: dict[str, Any] = measured.as_dict()
    entry["raw"] = _median(raws).as_dict() if raws else None
    entry["abe_over_raw"] = None
    if raws:
        raw = _median(raws)
        ratios = sorted(abe.msgs_per_s / raw.msgs_per_s for abe, raw in pairs if raw is not None)
        entry["abe_over_raw"] = {
            "msgs_per_s": statistics.median(ratios),
            "p50_ms": _ratio(measured.p50_ms, raw.p50_ms),
            "p99_ms": _ratio(measured.p99_ms, raw.p99_ms),
        }
    if len(pairs) > 1:
        entry["runs"] = [
            {"msgs_per_s": abe.msgs_per_s, "raw_msgs_per_s": raw.msgs_per_s if raw else None}
            for abe, raw in pairs
        ]
    return entry


def _median(measurements: list[Measurement]) -> Measurement:
    """The run with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(measurements, key=lambda measurement: measurement.msgs_per_s)
    return ordered[(len(ordered) - 1) // 2]


def _ratio(abe: float, raw: float) -> float | None:
    return abe / raw if raw > 0 else None


def _now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def render_table(report: dict[str, Any]) -> list[str]:
    """The report as the lines `abe bench` prints without --json: one table per shape."""
    backend, settings, raw_client = report["backend"], report["settings"], report["raw_client"]
    origin = f"{backend['distribution']} {backend['version']}" if backend["distribution"] else "?"
    lines = [
        f"abe bench: {backend['name']} ({origin}), Python {report['python']}; "
        f"{format_count(settings['messages'])} messages per workload, publish_many batches of "
        f"{settings['batch_size']}, drain_concurrent with {settings['concurrency']} handlers",
    ]
    no_raw = "no raw client" if raw_client["status"] == "none" else "skipped"
    header = ["WORKLOAD", "CLIENT", "MESSAGES", "SECONDS", "MSGS/S", "P50 MS", "P99 MS", "ABE/RAW"]
    for run in report["runs"]:
        count = run["keys"]
        lines += ["", f"payloads of ~{run['payload_bytes']} bytes, {count} key{'s' * (count != 1)}"]
        rows = []
        for name, entry in run["workloads"].items():
            ratio = entry["abe_over_raw"]
            shown = f"{ratio['msgs_per_s']:.2f}x" if ratio is not None else no_raw
            rows.append([name, "abe", *_cells(entry), shown])
            if entry["raw"] is not None:
                rows.append(["", raw_client["name"], *_cells(entry["raw"]), ""])
        lines += table(rows, header=header, right=(2, 3, 4, 5, 6))
    lines.append("")
    lines.append(
        "latency: per call (publish), per batch (publish_many), publish to receive "
        "(end_to_end), between two messages handled (drains)"
    )
    if raw_client["status"] == "measured":
        lines.append(
            "abe/raw: abe's msgs/s over the raw client's (drain: batched acks; drain_consumer: "
            "one ack each; drain_concurrent: batched acks); 1.00x means no overhead"
        )
    return lines


def _cells(measurement: dict[str, Any]) -> list[str]:
    return [
        format_count(measurement["messages"]),
        f"{measurement['seconds']:.3f}",
        format_rate(measurement["msgs_per_s"]),
        format_ms(measurement["p50_ms"]),
        format_ms(measurement["p99_ms"]),
    ]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe bench`."""
    defaults = BenchOptions()
    parser = commands.add_parser(
        "bench",
        help="measure throughput and latency of the configured backend",
        description=(
            "Measure publish, publish_many, end-to-end (publish to receive and ack) and "
            "draining a backlog (consume(), AsyncLoopConsumer at its defaults and with "
            "--concurrency handlers) on the configured backend, each on new keys, for each "
            "payload size and key count asked; when the backend ships a raw-client baseline, "
            "run it too on the same broker and report abe/raw. Progress goes to stderr, the "
            "result to stdout."
        ),
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=defaults.messages,
        metavar="N",
        help=f"messages per workload (default {defaults.messages:,})",
    )
    parser.add_argument(
        "--payload-bytes",
        type=sizes(at_least(MIN_PAYLOAD_BYTES, "a benchmark body holds its number and send time")),
        default=defaults.payload_bytes,
        metavar="B[,B...]",
        help=f"about how large each JSON body is, at least {MIN_PAYLOAD_BYTES}; several sizes "
        f"(256,4096,65536) run every workload at each (default {defaults.payload_bytes[0]})",
    )
    parser.add_argument(
        "--keys",
        type=sizes(positive_int),
        default=defaults.keys,
        metavar="N[,N...]",
        help="spread each workload's messages over N keys; several counts run each (default 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=defaults.concurrency,
        metavar="C",
        help=f"handlers of AsyncLoopConsumer in drain_concurrent (default {defaults.concurrency})",
    )
    parser.add_argument(
        "--workloads",
        type=workload_names,
        default=defaults.workloads,
        metavar="W[,W...]",
        help=f"which workloads to run (default all: {','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        metavar="S",
        help=f"messages per publish_many call (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=defaults.timeout,
        metavar="SECONDS",
        help=f"fail when a workload makes no progress for this long (default {defaults.timeout:g})",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=defaults.repeat,
        metavar="N",
        help="run each workload N times, abe and the raw client taking turns, and report the "
        "medians (the ratio is the median of each run's abe/raw) (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--skip-baseline", action="store_true", help="do not run the raw-client baseline"
    )
    return parser


def sizes(one: Callable[[str], int]) -> Callable[[str], tuple[int, ...]]:
    """A comma-separated list of numbers, each checked by `one`."""

    def parse(text: str) -> tuple[int, ...]:
        return tuple(one(part.strip()) for part in text.split(",") if part.strip())

    return parse


def workload_names(text: str) -> tuple[str, ...]:
    """Comma-separated workload names, each one `abe bench` knows."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload {', '.join(unknown) or '(none)'}; choose from {', '.join(WORKLOADS)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table or the JSON document."""
    options = BenchOptions(
        messages=args.messages,
        payload_bytes=args.payload_bytes,
        keys=args.keys,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        timeout=args.timeout,
        skip_baseline=args.skip_baseline,
        workloads=args.workloads,
        repeat=args.repeat,
    )
    progress = None if args.json or args.no_progress else sys.stderr
    report = asyncio.run(run_bench(options, progress))
    if args.json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        print("\n".join(render_table(report)), flush=True)
    return EXIT_OK
