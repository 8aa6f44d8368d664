"""`abe bench`: the documented JSON, the table, progress, and the raw-client baseline hook."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

import abe
from abe import MemoryBackend, MessageQueuePayload
from abe.benchmarking import (
    AbeWorkloads,
    Measurement,
    Progress,
    RawBaseline,
    Workload,
    bench_payload,
    percentile,
)
from abe.cli import main
from abe.cli.connect import LoadedBackend
from abe.cli.progress import ProgressLine

MEASUREMENT_KEYS = {"messages", "seconds", "msgs_per_s", "p50_ms", "p99_ms"}


ALL = ["publish", "publish_many", "end_to_end", "drain", "drain_consumer", "drain_concurrent"]


def test_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--messages", "200"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report) == {
        "schema",
        "backend",
        "abe_version",
        "python",
        "python_implementation",
        "platform",
        "started_at",
        "settings",
        "raw_client",
        "runs",
    }
    assert report["schema"] == "abe-bench/2"
    assert report["backend"] == {
        "name": "memory",
        "distribution": "abe-core",
        "version": abe.__version__,
    }
    assert report["settings"] == {
        "messages": 200,
        "batch_size": 100,
        "concurrency": 16,
        "timeout": 30.0,
        "repeat": 1,
    }
    assert report["raw_client"] == {"status": "none", "name": None}
    (run,) = report["runs"]
    assert (run["payload_bytes"], run["keys"]) == (256, 1)
    assert list(run["workloads"]) == ALL
    for name, entry in run["workloads"].items():
        assert set(entry) == MEASUREMENT_KEYS | {"raw", "abe_over_raw"}
        drain = name.startswith("drain")
        assert entry["messages"] == (199 if drain else 200)  # a drain times N - 1 gaps
        assert entry["seconds"] > 0
        assert entry["msgs_per_s"] == pytest.approx(entry["messages"] / entry["seconds"])
        assert 0 < entry["p50_ms"] <= entry["p99_ms"]
        assert entry["raw"] is None
        assert entry["abe_over_raw"] is None
    assert captured.err == ""  # no progress with --json


def test_shapes_run_every_workload_at_each_size_and_key_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "--json", "--messages", "60", "--payload-bytes", "100,2000", "--keys", "1,5"]
    assert main([*argv, "--workloads", "publish,drain_concurrent", "--concurrency", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    shapes = [(run["payload_bytes"], run["keys"]) for run in report["runs"]]
    assert shapes == [(100, 1), (100, 5), (2000, 1), (2000, 5)]
    assert report["settings"]["concurrency"] == 4
    for run in report["runs"]:
        assert list(run["workloads"]) == ["publish", "drain_concurrent"]


def test_unknown_workloads_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workloads", "publish,bogus"]) == 2
    assert "unknown workload bogus" in capsys.readouterr().err


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["publish", "publish_many", "end_to_end"])
async def test_every_workload_goes_round_the_keys(name: str) -> None:
    backend = MemoryBackend()
    keys = ("k0", "k1", "k2")
    workload = Workload(messages=12, payload_bytes=64, batch_size=2, key="k0", group="g", keys=keys)
    await getattr(AbeWorkloads(backend), name)(workload, lambda count: None)
    # The publish workloads first make each key with one message, as a raw baseline makes
    # its topics or streams, before their clock starts.
    made_first = 1 if name.startswith("publish") else 0
    assert [len(backend.broker.messages(key)) for key in keys] == [4 + made_first] * 3


@pytest.mark.asyncio
async def test_a_drain_counts_every_backlog_message_once_over_every_key() -> None:
    backend = MemoryBackend()
    workload = Workload(
        messages=30, payload_bytes=64, batch_size=4, key="k0", group="g", keys=("k0", "k1", "k2")
    )
    seen: list[int] = []
    measured = await AbeWorkloads(backend).drain_concurrent(workload, seen.append)
    assert seen[-1] == 30
    assert measured.messages == 29
    assert sorted(backend.broker.keys()) == ["k0", "k1", "k2"]
    assert all(backend.broker.pending(key, "g") == 0 for key in ("k0", "k1", "k2"))


def test_table_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--messages", "50", "--batch-size", "7"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("abe bench: memory (abe-core ")
    assert "50 messages per workload, publish_many batches of 7" in lines[0]
    assert lines[2] == "payloads of ~256 bytes, 1 key"
    assert lines[3].split() == [
        "WORKLOAD", "CLIENT", "MESSAGES", "SECONDS", "MSGS/S", "P50", "MS", "P99", "MS", "ABE/RAW"
    ]  # fmt: skip
    for row, workload in zip(lines[4:10], ALL, strict=True):
        assert row.split()[:2] == [workload, "abe"]
        assert row.endswith("no raw client")
    for workload in ALL:
        assert f"{workload} (abe, ~256 B, 1 key): " in captured.err  # not a tty: plain lines


def test_skip_baseline_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--messages", "20", "--skip-baseline"]) == 0
    assert json.loads(capsys.readouterr().out)["raw_client"] == {"status": "skipped", "name": None}


class _RecordingBaseline:
    """A stand-in raw client: abe's own workloads on another memory broker, keys recorded."""

    name = "fake-client 9.9"

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.closed = False
        self._inner = AbeWorkloads(MemoryBackend())

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        self.keys.append(workload.key)
        return await self._inner.publish(workload, progress)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        self.keys.append(workload.key)
        return await self._inner.publish_many(workload, progress)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        self.keys.append(workload.key)
        return await self._inner.end_to_end(workload, progress)

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        self.keys.append(workload.key)
        return await self._inner.drain_consumer(workload, progress)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        self.keys.append(workload.key)
        return await self._inner.drain(workload, progress)

    async def close(self) -> None:
        self.closed = True
        await self._inner.backend.close()


class _WithBaseline(MemoryBackend):
    """A backend whose provider ships a raw baseline, through the documented hook."""

    def __init__(self, baseline: RawBaseline) -> None:
        super().__init__()
        self.baseline = baseline

    def raw_baseline(self) -> RawBaseline:
        return self.baseline


def _use(monkeypatch: pytest.MonkeyPatch, baseline: RawBaseline) -> _WithBaseline:
    backend = _WithBaseline(baseline)
    monkeypatch.setattr("abe.cli.bench.load", lambda: LoadedBackend(backend, fallback=False))
    return backend


def test_a_raw_baseline_runs_beside_abe_and_gives_ratios(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _RecordingBaseline()
    backend = _use(monkeypatch, baseline)
    deleted: dict[str, int] = {}  # key -> messages it held on abe's broker
    delete = backend.broker.delete

    def record(key: str) -> None:
        deleted[key] = len(backend.broker.messages(key))
        delete(key)

    monkeypatch.setattr(backend.broker, "delete", record)
    assert main(["bench", "--json", "--messages", "40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["raw_client"] == {"status": "measured", "name": "fake-client 9.9"}
    for name, entry in report["runs"][0]["workloads"].items():
        assert set(entry["raw"]) == MEASUREMENT_KEYS
        assert entry["raw"]["messages"] == (39 if name.startswith("drain") else 40)
        ratio = entry["abe_over_raw"]
        assert set(ratio) == {"msgs_per_s", "p50_ms", "p99_ms"}
        assert ratio["msgs_per_s"] == pytest.approx(
            entry["msgs_per_s"] / entry["raw"]["msgs_per_s"]
        )
    assert len(baseline.keys) == 6
    assert all("-raw-" in key for key in baseline.keys)  # its own keys, not abe's
    used_by_abe = {key for key, held in deleted.items() if held}
    assert len(used_by_abe) == 7  # the warm-up and the six workloads
    assert not set(baseline.keys) & used_by_abe
    assert set(baseline.keys) < set(deleted)  # the raw client's keys are deleted too
    assert backend.broker.keys() == []
    assert baseline.closed
    assert backend.closed


def test_repeat_takes_turns_and_reports_medians(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _RecordingBaseline()
    backend = _use(monkeypatch, baseline)
    order: list[str] = []  # "<side>-<run>" as each side's run starts, abe's seen by its publishes
    publish, raw_publish = backend.publish, baseline.publish

    async def abe_publish(key: str, payload: MessageQueuePayload, **options: Any) -> None:
        if "-abe-publish-" in key and (run := f"abe-{key.split('-')[-2]}") not in order:
            order.append(run)
        await publish(key, payload, **options)

    async def raw_side(workload: Workload, progress: Progress) -> Measurement:
        order.append(f"raw-{workload.key.split('-')[-2]}")
        return await raw_publish(workload, progress)

    monkeypatch.setattr(backend, "publish", abe_publish)
    monkeypatch.setattr(baseline, "publish", raw_side)
    argv = ["bench", "--json", "--messages", "30", "--repeat", "3", "--workloads", "publish"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["repeat"] == 3
    # the raw client goes first in every second run
    assert order == ["abe-0", "raw-0", "raw-1", "abe-1", "abe-2", "raw-2"]
    entry = report["runs"][0]["workloads"]["publish"]
    runs = entry["runs"]
    assert len(runs) == 3
    assert len(set(baseline.keys)) == 3  # fresh keys for every run
    assert entry["msgs_per_s"] == sorted(run["msgs_per_s"] for run in runs)[1]
    assert entry["raw"]["msgs_per_s"] == sorted(run["raw_msgs_per_s"] for run in runs)[1]
    ratios = sorted(run["msgs_per_s"] / run["raw_msgs_per_s"] for run in runs)
    assert entry["abe_over_raw"]["msgs_per_s"] == pytest.approx(ratios[1])


def test_the_table_shows_the_raw_client_and_the_ratio(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, _RecordingBaseline())
    assert main(["bench", "--messages", "20", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()[4:16]
    assert [row.split()[:2] for row in rows[::2]] == [[name, "abe"] for name in ALL]
    assert all(row.split()[-1].endswith("x") for row in rows[::2])
    assert all(row.split()[:2] == ["fake-client", "9.9"] for row in rows[1::2])
    assert "abe/raw: abe's msgs/s over the raw client's" in captured.out
    assert captured.err == ""


class _StuckBaseline(_RecordingBaseline):
    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_stalled_workload_fails_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _StuckBaseline()
    _use(monkeypatch, baseline)
    assert main(["bench", "--messages", "10", "--timeout", "0.2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "abe bench: publish (fake-client 9.9, ~256 B, 1 key) made no progress for 0.2 s, "
        "after 0 of 10 messages; is the broker up? (--timeout changes how long to wait)"
    )
    assert baseline.closed


def test_a_failing_baseline_says_how_to_measure_abe_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Failing(_RecordingBaseline):
        async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
            raise ConnectionRefusedError("refused")

    _use(monkeypatch, Failing())
    assert main(["bench", "--messages", "10", "--no-progress"]) == 1
    assert capsys.readouterr().err.strip() == (
        "abe bench: the raw baseline fake-client 9.9 failed in publish_many: "
        "ConnectionRefusedError: refused; rerun with --skip-baseline to measure abe alone"
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_bench_payload_has_about_the_size_asked() -> None:
    for size in (100, 256, 4096):
        for seq in (5, 12_345_678):
            payload = bench_payload(seq, size)
            # the number and the clock reading vary in length: 1 to 10 and 3 to 18 characters
            assert abs(len(json.dumps(payload, separators=(",", ":"))) - size) <= 24
    assert set(bench_payload(1, 10)) == {"seq", "sent", "pad"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    times = iter([0.0, 0.05, 0.2])
    stream = _Terminal()
    line = ProgressLine(stream, "publish (abe)", 100, clock=lambda: next(times))
    line(10)  # at 0.05 s: too soon, throttled
    line(50)  # at 0.2 s: shown
    line.finish("done")
    shown = "publish (abe): 50/100 (50%)"
    done = "publish (abe): done"
    assert stream.getvalue() == f"\r{shown}\r{done}{' ' * (len(shown) - len(done))}\n"


def test_progress_writes_plain_lines_elsewhere_and_nothing_when_off() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, "publish (abe)", 100)
    line(1)  # within the first two seconds: nothing
    line.finish("done")
    assert stream.getvalue() == "publish (abe): done\n"
    silent = ProgressLine(None, "publish (abe)", 100)
    silent(100)
    silent.finish("done")


def test_a_payload_smaller_than_a_benchmark_body_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from abe.benchmarking import MIN_PAYLOAD_BYTES, bench_payload

    assert main(["bench", "--payload-bytes", "10"]) == 2
    assert f"must be at least {MIN_PAYLOAD_BYTES}" in capsys.readouterr().err
    smallest = json.dumps(bench_payload(10**9, MIN_PAYLOAD_BYTES), separators=(",", ":"))
    assert len(smallest) <= MIN_PAYLOAD_BYTES + 8  # the float's digits vary a little
