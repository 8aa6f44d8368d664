"""`abe run --workers P`: the supervisor starts real worker processes, restarts a killed one,
gives up on workers that cannot start, and forwards a first and a second signal.

The workers run on the memory backend, each with a broker of its own (a memory broker
cannot be shared between processes), so these tests watch processes, not messages;
tests-integration/abe-core/test_run.py checks messages on real brokers. The supervisor
runs in the test's event loop and takes the signals the test sends this process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from abe.cli import build_parser
from abe.cli.control import SupervisorLink, WorkerChannel
from abe.cli.run import supervisor_for
from abe.cli.supervisor import RestartPolicy, Supervisor, describe_exit

START = 60.0
"""Seconds a test gives its workers to start (a Python process each, on a busy machine)."""

IDLE = """
async def handle(payload):
    pass
"""

BUSY = """
import asyncio
import os

from abe import load_backend


async def _publish_one():
    async with load_backend() as backend:
        await backend.publish("orders", {"n": 1})


asyncio.run(_publish_one())  # into this worker's own memory broker, before it starts


async def handle(payload):
    open(os.path.join(os.environ["BUSY_DIR"], str(os.getpid())), "w").close()
    await asyncio.sleep(60)  # cancelled by a second signal long before
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """`app(source)`: a module in the test's current directory (the workers' too)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUSY_DIR", str(tmp_path))

    def write(source: str) -> str:
        name = f"app_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def supervisor(
    spec: str, *options: str, policy: RestartPolicy | None = None, metrics: Path | None = None
) -> Supervisor:
    args = build_parser().parse_args(["run", spec, "--keys", "orders", *options])
    return supervisor_for(args, str(metrics) if metrics else None, policy)


async def until(supervisor: Supervisor, predicate: Callable[[], bool], what: str) -> None:
    """Wait for the supervisor's state to satisfy `predicate` (it notifies each change)."""
    async with supervisor.changes:
        try:
            await asyncio.wait_for(supervisor.changes.wait_for(predicate), START)
        except asyncio.TimeoutError:
            pytest.fail(f"not within {START:g}s: {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def busy(folder: Path) -> set[str]:
    """The pids of the BUSY workers whose handler has started."""
    return {path.name for path in folder.iterdir() if path.name.isdigit()}


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.mark.asyncio
async def test_a_killed_worker_is_started_again_and_sigterm_stops_all_with_0(
    app: Callable[[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    pytest.importorskip("prometheus_client", reason="abe-core[metrics] is not installed")
    sup = supervisor(
        f"{app(IDLE)}:handle",
        "--workers=2",
        "--metrics-port=0",
        policy=RestartPolicy(first_delay=0.1),
        metrics=tmp_path,
    )
    running = asyncio.get_running_loop().create_task(sup.run())
    await until(sup, lambda: sup.joined() == 2, "both workers joined their group")
    assert sup.endpoint is not None
    status, body = await get(sup.endpoint.port, "/readyz")
    assert status == 200, body
    assert body.count(": ready") == 2
    first = sup.pids
    os.kill(first[0], signal.SIGKILL)
    await until(sup, lambda: sup.restarts == 1 and sup.joined() == 2, "the killed one is back")
    assert sup.pids[1] == first[1]
    assert sup.pids[0] not in first
    status, text = await get(sup.endpoint.port, "/metrics")
    assert "abe_run_workers 2.0" in text
    assert "abe_run_worker_restarts_total 1.0" in text
    killed = f"worker 1 (pid {first[0]}) was killed by SIGKILL; starting it again in 0.1s"
    assert killed in caplog.text
    now = sup.pids
    os.kill(os.getpid(), signal.SIGTERM)  # to the supervisor, as a service manager would
    assert await asyncio.wait_for(running, START) == 0
    assert not any(alive(pid) for pid in now)
    assert "all workers stopped" in caplog.text


@pytest.mark.asyncio
async def test_workers_that_never_start_make_it_give_up_with_1(
    app: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    crashing = app("import os\nos._exit(3)\n")
    sup = supervisor(
        f"{crashing}:handle", "--workers=1", policy=RestartPolicy(0.01, max_start_failures=3)
    )
    assert await asyncio.wait_for(sup.run(), START) == 1
    assert sup.restarts == 2
    assert "worker 1" in caplog.text
    assert "exited with 3 before joining its group, 3 times in a row; giving up" in caplog.text


@pytest.mark.asyncio
async def test_a_worker_that_reports_bad_usage_stops_all_with_2_unrestarted(
    app: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor("no_such_module_here:handle", "--workers=2")
    assert await asyncio.wait_for(sup.run(), START) == 2
    assert sup.restarts == 0
    assert "exited with 2: bad usage or settings (said above); stopping" in caplog.text


@pytest.mark.asyncio
async def test_a_second_signal_stops_busy_workers_at_once(
    app: Callable[[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = supervisor(f"{app(BUSY)}:handle", "--workers=2", "--shutdown-timeout=60")
    running = asyncio.get_running_loop().create_task(sup.run())
    await until(sup, lambda: sup.joined() == 2, "both workers joined their group")
    deadline = asyncio.get_running_loop().time() + START
    while busy(tmp_path) < {str(pid) for pid in sup.pids}:
        assert asyncio.get_running_loop().time() < deadline, "the handlers never started"
        await asyncio.sleep(0.05)  # a file each handler writes: poll it, with a deadline
    os.kill(os.getpid(), signal.SIGINT)
    await until(sup, lambda: sup.stopping, "the supervisor heard the first signal")
    assert sup.alive() == 2  # the handlers run on: a graceful stop waits for them
    os.kill(os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(running, START) == 130
    assert "SIGINT again: stopping every worker at once" in caplog.text


def test_exits_are_described_in_words() -> None:
    assert describe_exit(1) == "exited with 1"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"


# ---- the control lines ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_worker_obeys_stop_and_now_answers_status_and_says_started() -> None:
    ours, theirs = socket.socketpair()
    started = asyncio.Event()
    heard: list[str] = []
    changed = asyncio.Event()

    def note(what: str) -> None:
        heard.append(what)
        changed.set()

    channel = await WorkerChannel.open(ours, started.set)
    link = await SupervisorLink.open(
        theirs.detach(), stop=note, now=lambda signum: note(f"now {signum}"), status=lambda: "ready"
    )
    link.started()
    await asyncio.wait_for(started.wait(), 5)
    assert await channel.status(5) == "ready"
    for order, expected in (("stop", "asked by the supervisor"), ("now 15", "now 15")):
        changed.clear()
        channel.send(order)
        await asyncio.wait_for(changed.wait(), 5)
        assert heard[-1] == expected
    changed.clear()
    await channel.close()  # the supervisor is gone: the worker stops gracefully
    await asyncio.wait_for(changed.wait(), 5)
    assert heard[-1] == "the supervisor is gone"
    await link.close()


@pytest.mark.asyncio
async def test_a_worker_that_does_not_answer_is_unready() -> None:
    ours, theirs = socket.socketpair()
    channel = await WorkerChannel.open(ours, lambda: None)
    assert await channel.status(0.1) == "unready: no answer within 0.1s"
    await channel.close()
    theirs.close()
