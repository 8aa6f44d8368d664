"""`abe run` as a service manager runs it, against every broker: real processes, real signals.

- A backlog, SIGTERM mid-way: the worker exits 0 within its shutdown timeout; a second
  `abe run` finishes the backlog; no message is handled twice, none is missing.
- `--workers 2`, one worker SIGKILLed mid-backlog: the supervisor starts it again, every
  message is handled (only the killed worker's unacknowledged ones twice), and the
  supervisor's /metrics sums what every worker did.

The handler appends `n pid attempt` to a file for each message it finishes, one write
per line (O_APPEND), so the lines of several processes never mix. Each test publishes to
a new key, and deletes it (and its dead-letter key) at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from abe import load_backend

KINDS = ("redis", "nats", "kafka", "sqs")

SHUTDOWN_TIMEOUT = 20.0
WAIT = 180.0
"""Seconds a test waits for a backlog to be handled (Kafka group joins take a while)."""

_PROVIDER_VARIABLES = ("ABE_", "QUEUE_BACKEND", "REDIS_", "NATS_", "KAFKA_", "AWS_")

_TUNING: dict[str, dict[str, str]] = {
    # Tansu: no idempotent producer, and a short session so a group join takes ~1 s
    "kafka": {"ABE_KAFKA_IDEMPOTENT": "false", "ABE_KAFKA_SESSION_TIMEOUT": "2"},
}

APP = """
import asyncio
import os

from abe import current_delivery

RECORD = os.environ["RECORD"]
DELAY = float(os.environ.get("HANDLER_DELAY", "0.02"))


async def handle(payload):
    await asyncio.sleep(DELAY)  # the work
    line = f"{payload['n']} {os.getpid()} {current_delivery().attempt}\\n"
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
"""


@dataclass
class Setup:
    """A broker's environment, a new key and group, and the folder the app lives in."""

    kind: str
    env: dict[str, str]
    folder: Path
    key: str = field(default_factory=lambda: f"abe-run-{uuid.uuid4().hex[:10]}")
    group: str = field(default_factory=lambda: f"g{uuid.uuid4().hex[:8]}")

    @property
    def record(self) -> Path:
        return self.folder / "handled.txt"

    def handled(self) -> list[tuple[int, int, int]]:
        """(n, pid, attempt) of every message a handler finished, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [(int(n), int(pid), int(attempt)) for n, pid, attempt in map(str.split, lines)]

    def abe_run(self, *options: str, log: str) -> subprocess.Popen[bytes]:
        """`python -m abe run app:handle` on this key and group, its stderr to `log`."""
        argv = [sys.executable, "-m", "abe", "run", "app:handle", "--keys", self.key]
        argv += ["--group", self.group, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), *options]
        with (self.folder / log).open("wb") as stderr:
            return subprocess.Popen(argv, cwd=self.folder, env=self.env, stderr=stderr)

    def log(self, name: str) -> str:
        return (self.folder / name).read_text(errors="replace")


@pytest.fixture(params=KINDS)
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """The broker of one kind, `app.py` in a new folder, and an environment for both."""
    kind = request.param
    broker = request.getfixturevalue(f"{kind}_broker")
    variables = {"QUEUE_BACKEND": kind, **broker.env(), **_TUNING.get(kind, {})}
    variables["ABE_MQ_REDELIVERY_TIMEOUT"] = "5"  # a SIGKILLed worker's messages come back soon
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROVIDER_VARIABLES)}
    env.update(variables, RECORD=str(tmp_path / "handled.txt"), PYTHONUNBUFFERED="1")
    (tmp_path / "app.py").write_text(APP)
    for name in [name for name in os.environ if name.startswith(_PROVIDER_VARIABLES)]:
        monkeypatch.delenv(name)
    for name, value in variables.items():  # for this process's own backend: publish, delete
        monkeypatch.setenv(name, value)
    made = Setup(kind, env, tmp_path)
    yield made
    asyncio.run(_delete(made.key))


async def _publish(key: str, count: int) -> None:
    async with load_backend() as backend:
        for start in range(0, count, 50):
            await backend.publish_many(
                key, [{"n": n} for n in range(start, min(count, start + 50))]
            )


async def _delete(key: str) -> None:
    async with load_backend() as backend:
        await backend.delete_keys([key, f"{key}-dlq"])


def wait_for(what: str, check: Callable[[], bool], *procs: subprocess.Popen[bytes]) -> None:
    """Poll `check` (a file or an endpoint; nothing to await across processes) until true."""
    deadline = time.monotonic() + WAIT
    while not check():
        for proc in procs:
            assert proc.poll() is None, f"abe run exited with {proc.returncode} while {what}"
        assert time.monotonic() < deadline, f"not within {WAIT:g}s: {what}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> tuple[int, float]:
    """Send `signum`; the exit code and the seconds it took to exit."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"abe run did not exit within {SHUTDOWN_TIMEOUT + 30:g}s of the signal")
    return code, time.monotonic() - sent


def metrics_url(setup: Setup, log: str) -> str:
    """The /metrics address `abe run --metrics-port 0` logged."""
    found: list[str] = []

    def logged() -> bool:
        found[:] = re.findall(r"serving metrics and health on (http://\S+) ", setup.log(log))
        return bool(found)

    wait_for("the endpoint is logged", logged)
    return found[0]


def scrape(url: str, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def total(text: str, name: str) -> float:
    """The sum of every sample called `name` in a scrape."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def test_sigterm_mid_backlog_then_a_second_run_finishes_it_with_nothing_twice(
    setup: Setup, record_property: Callable[[str, Any], None]
) -> None:
    count = 150
    asyncio.run(_publish(setup.key, count))
    first = setup.abe_run("--concurrency", "4", log="first.log")
    try:
        wait_for("the first run handles a third", lambda: len(setup.handled()) >= count // 3, first)
        code, took = stop(first)
    finally:
        if first.poll() is None:
            first.kill()
    by_first = len(setup.handled())
    assert code == 0, setup.log("first.log")
    assert took < SHUTDOWN_TIMEOUT, f"exited {took:.1f}s after SIGTERM"
    assert by_first < count, "the backlog was gone before SIGTERM: nothing was tested"
    log = setup.log("first.log")
    assert "stopping (SIGTERM): no longer taking messages" in log
    assert f"stopped (SIGTERM): {by_first} acknowledged" in log

    second = setup.abe_run("--concurrency", "4", "--metrics-port", "0", log="second.log")
    try:
        url = metrics_url(setup, "second.log")
        every = set(range(count))
        wait_for(
            "the second run finishes", lambda: {n for n, _, _ in setup.handled()} >= every, second
        )
        by_second = len(setup.handled()) - by_first
        wait_for(
            "the second run's acknowledgements are counted",
            lambda: total(scrape(url)[1], "abe_messages_acked_total") >= by_second,
            second,
        )
        assert scrape(url, "/readyz") == (200, "ready\n")
        assert scrape(url, "/healthz") == (200, "ok\n")
        code, _ = stop(second)
    finally:
        if second.poll() is None:
            second.kill()
    assert code == 0, setup.log("second.log")
    numbers = Counter(n for n, _, _ in setup.handled())
    twice = sorted(n for n, seen in numbers.items() if seen > 1)
    record_property("handled", f"{by_first} + {by_second} of {count}; exit {took:.2f}s")
    print(
        f"{setup.kind}: first run {by_first}, second {by_second}, twice {twice}, "
        f"SIGTERM to exit {took:.2f}s"
    )
    assert twice == [], f"handled twice: {twice}"
    assert set(numbers) == set(range(count))


def test_a_sigkilled_worker_is_restarted_and_nothing_is_lost(
    setup: Setup, record_property: Callable[[str, Any], None]
) -> None:
    count = 120
    asyncio.run(_publish(setup.key, count))
    setup.env["HANDLER_DELAY"] = "0.05"
    supervisor = setup.abe_run(
        "--workers", "2", "--concurrency", "2", "--metrics-port", "0", log="supervisor.log"
    )
    try:
        url = metrics_url(setup, "supervisor.log")
        wait_for("a fifth is handled", lambda: len(setup.handled()) >= count // 5, supervisor)
        victim = setup.handled()[-1][1]  # a worker that is handling messages now
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "the killed worker is started again and joins its group",
            lambda: (
                total(scrape(url)[1], "abe_run_worker_restarts_total") == 1
                and scrape(url, "/readyz")[0] == 200
            ),
            supervisor,
        )
        every = set(range(count))
        wait_for(
            "every message is handled",
            lambda: {n for n, _, _ in setup.handled()} >= every,
            supervisor,
        )
        wait_for(
            "every acknowledgement is counted",
            lambda: total(scrape(url)[1], "abe_messages_acked_total") >= count,
            supervisor,
        )
        status, text = scrape(url)
        ready = scrape(url, "/readyz")
        code, took = stop(supervisor)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    log = setup.log("supervisor.log")
    assert f"(pid {victim}) was killed by SIGKILL; starting it again in 0.5s" in log
    assert status == 200
    assert total(text, "abe_run_worker_restarts_total") == 1
    assert total(text, "abe_run_workers") == 2
    assert total(text, "abe_messages_consumed_total") >= count
    assert total(text, "abe_handler_duration_seconds_count") >= count
    assert ready[0] == 200, ready
    assert code == 0, log
    assert took < SHUTDOWN_TIMEOUT
    handled = setup.handled()
    numbers = Counter(n for n, _, _ in handled)
    twice = sorted(n for n, seen in numbers.items() if seen > 1)
    by_victim = {n for n, pid, _ in handled if pid == victim}
    record_property("handled", f"{len(handled)} for {count}; twice {len(twice)}")
    print(
        f"{setup.kind}: {len(handled)} handled for {count}, {len(twice)} twice "
        f"(all first handled by the killed worker), exit {took:.2f}s"
    )
    assert set(numbers) == set(range(count))  # nothing lost
    # at least once: only what the killed worker had not acknowledged comes again
    assert set(twice) <= by_victim, (
        f"handled twice, not by the killed worker: {set(twice) - by_victim}"
    )
