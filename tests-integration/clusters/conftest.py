"""Fixtures of the cluster tests: failover runs through the crash test's harness.

A failover run is the crash test's (tests-integration/crash/abe_crash): a producer and
worker processes running AsyncLoopConsumer, with one cluster node killed and restarted
instead of the single broker, and no worker killed. The helpers live in
cluster_testing.py beside this file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _folder in ("clusters", "crash", "abe-mq-nats", "abe-mq-kafka"):
    _path = str(_HERE.parent / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from abe_brokers import unique_name  # noqa: E402
from abe_crash.run import CrashRun, Target  # noqa: E402
from abe_crash.sizes import Sizes  # noqa: E402
from abe_crash.verdict import Verdict  # noqa: E402
from cluster_testing import FAILOVER_SIZES, Failover  # noqa: E402

SUMMARY_PROPERTY = "failover_line"
"""The JUnit property holding a run's one-line figures; the terminal summary repeats it."""
_LINES: list[str] = []


@pytest.fixture(scope="session")
def failover_sizes() -> Sizes:
    """The failover run's sizes: FAILOVER_SIZES, with any ABE_CRASH_* variable applied."""
    try:
        overrides = Sizes.from_env()
    except ValueError as exc:
        pytest.fail(f"bad failover size: {exc}", pytrace=False)
    changed = {
        name: getattr(overrides, name)
        for name in Sizes.__dataclass_fields__
        if getattr(overrides, name) != getattr(Sizes(), name)
    }
    return Sizes(**{**FAILOVER_SIZES.__dict__, **changed})


@pytest.fixture
def failover(
    tmp_path: Path,
    failover_sizes: Sizes,
    record_property: Callable[[str, object], None],
) -> Failover:
    """`failover(target, name, key=None)` runs the crash harness once and records its figures;
    `key` is for a target whose crash depends on it (the Redis master serving its slot)."""

    def run(target: Target, name: str, key: str | None = None) -> Verdict:
        crash_run = CrashRun(
            target,
            failover_sizes,
            tmp_path / "run",
            key=key or unique_name("failover"),
            group=unique_name("failover-group"),
        )
        verdict = crash_run.run()
        f = verdict.figures
        for figure, value in f.items():
            record_property(figure, value)
        record_property("broker", target.describe)
        record_property("files", str(crash_run.directory))
        line = (
            f"failover {name}: confirmed {f['confirmed']}, delivered {f['delivered']}, "
            f"lost {f['lost']}, duplicated {f['duplicates']}, consumption resumed "
            f"{_seconds(f.get('resumed_after_kill_s'))} after the kill, every worker "
            f"{_seconds(f.get('every_worker_resumed_s'))} (node down "
            f"{_seconds(f.get('broker_down_s'))}) - {'OK' if verdict.ok else 'FAILED'} "
            f"[{target.describe}; files in {crash_run.directory}]"
        )
        # the summary takes it from the test's report, so it comes through pytest-xdist too
        record_property(SUMMARY_PROPERTY, line)
        return verdict

    return run


def _seconds(value: object) -> str:
    return f"{value}s" if isinstance(value, int | float) else str(value)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each failover run's line (in the controlling process under pytest-xdist)."""
    if report.when == "call":
        _LINES.extend(
            str(value) for name, value in report.user_properties if name == SUMMARY_PROPERTY
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line of figures per cluster run, whatever the outcome."""
    if _LINES:
        terminalreporter.section("abe cluster failover")
        for line in _LINES:
            terminalreporter.write_line(line)
