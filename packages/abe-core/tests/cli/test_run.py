"""`abe run MODULE:NAME` on the memory backend, in this process: arguments, loading NAME,
routing by key, signals and exit codes.

The handler modules are written into the test's own current directory, as a user's
`service.py` would be. The memory broker is shared with the test through
ABE_MEMORY_BROKER, so a test publishes first and reads the broker afterwards. Signals
are real: the handlers send them to this process, and `abe run`'s handlers take them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from abe import MemoryBroker, load_backend
from abe.cli import build_parser, main
from abe.cli.errors import EXIT_USAGE
from abe.cli.run import worker_argv

KEY = "orders"

RECORDING = """
import asyncio
import os
import signal

from abe import current_delivery

RECORD = os.environ["RECORD"]
STOP_AFTER = int(os.environ.get("STOP_AFTER", "0"))
handled = 0


def record(payload, who):
    global handled
    with open(RECORD, "a") as out:
        out.write(f"{current_delivery().key} {payload['n']} {who}\\n")
    handled += 1
    if handled == STOP_AFTER:
        os.kill(os.getpid(), signal.SIGTERM)


async def handle(payload):
    record(payload, "handle")
    await asyncio.sleep(0.05)  # still running when SIGTERM comes: it must finish


async def orders(payload):
    record(payload, "orders")


async def refunds(payload):
    record(payload, "refunds")


routes = {"orders": orders, "refunds": refunds}


class Handler:
    async def __call__(self, payload):
        record(payload, "instance")


instance = Handler()
"""
"""Records each message as `key n handler`; SIGTERM to itself after STOP_AFTER of them."""

STUCK = """
import asyncio
import logging
import os
import signal

SIGNAL = signal.Signals[os.environ.get("SIGNAL", "SIGTERM")]
stopping = asyncio.Event()


class _Stopping(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("stopping ("):
            stopping.set()


logging.getLogger("abe.run").addHandler(_Stopping())


async def handle(payload):
    os.kill(os.getpid(), SIGNAL)
    await stopping.wait()  # the first signal was heard: running handlers may finish...
    os.kill(os.getpid(), SIGNAL)  # ...but a second one stops them at once
    await asyncio.sleep(30)  # cancelled long before, or the test fails (exit 0, not 130/143)
"""
"""A handler that never finishes, and sends its own process two signals."""


@pytest.fixture
def write_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """`write_app(source)`: a module in a new current directory; returns its name.

    sys.path is restored afterwards (abe run adds the current directory to it), and the
    modules are forgotten.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".")])
    monkeypatch.setenv("RECORD", str(tmp_path / "handled.txt"))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"app_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def records(tmp_path: Path) -> list[list[str]]:
    """The lines the RECORDING handlers wrote, in order: [key, n, handler]."""
    path = tmp_path / "handled.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def handled(tmp_path: Path) -> list[tuple[str, int]]:
    """What the RECORDING handlers handled, in order: (key, n)."""
    return [(key, int(n)) for key, n, _ in records(tmp_path)]


def publish(key: str, numbers: range) -> None:
    async def send() -> None:
        async with load_backend() as backend:
            await backend.publish_many(key, [{"n": n} for n in numbers])

    asyncio.run(send())


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `abe run` printed on stderr (failing if there were more, or a traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        ([], "the following arguments are required: MODULE:NAME"),
        (["--concurrency", "0"], "must be at least 1"),
        (["--workers", "none"], "is not a whole number"),
        (["--keys", " , "], "names no key"),
        (["--shutdown-timeout", "-1"], "must be a positive number of seconds"),
        (["--metrics-port", "70000"], "must be 0 to 65535"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = [] if not argv else ["app:handle"]
    assert main(["run", *target, *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err


def test_help_says_what_name_may_be_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "NAME is an async function taking the payload" in out
    assert "or a dict of key to such functions" in out
    assert "130 (SIGINT) or 143 (SIGTERM)" in out
    assert "--control-fd" not in out  # the supervisor's own option stays hidden


def test_abe_lists_run_among_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "run" in capsys.readouterr().out.split("COMMAND")[-1]


def test_a_workers_command_line_parses_back_to_the_same_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "run",
            "svc:handle",
            "--group=-billing",
            "--keys=a,b",
            "--concurrency=3",
            "--max-attempts=2",
            "--shutdown-timeout=7.5",
            "--log-level=WARNING",
            "--metrics-port=0",
            "--workers=4",
            "--debug",
        ]
    )
    argv = worker_argv(args, 9)
    assert argv[:4] == [sys.executable, "-m", "abe", "run"]
    again = parser.parse_args(argv[3:])
    for option in ("target", "group", "keys", "concurrency", "max_attempts", "shutdown_timeout"):
        assert getattr(again, option) == getattr(args, option), option
    assert (again.log_level, again.debug, again.control_fd) == ("warning", True, 9)
    assert again.record_metrics  # the worker records; the supervisor serves
    assert (again.metrics_port, again.workers) == (None, 1)


# ---- loading MODULE:NAME ----------------------------------------------------------------------

NOT_ASYNC = "def handle(payload):\n    pass\n"


@pytest.mark.parametrize(
    ("source", "name", "said"),
    [
        (None, "{app}", "'{app}' is not MODULE:NAME; name the module and the handler in it"),
        (None, "nowhere:handle", "no module named 'nowhere' in {cwd} or on the Python path"),
        ("raise RuntimeError('no database')", "{app}:handle", "importing '{app}' failed: "),
        ("def handle(:\n", "{app}:handle", "importing '{app}' failed: SyntaxError: "),
        ("import not_installed_dep_xyz", "{app}:h", "No module named 'not_installed_dep_xyz'"),
        ("import sys\nsys.exit(3)", "{app}:handle", "importing '{app}' failed: SystemExit: 3"),
        (RECORDING, "{app}:missing", "'{app}' has no 'missing'; it has handle, instance, ..."),
        (NOT_ASYNC, "{app}:handle", "{app}:handle is not async; define it with `async def"),
        ("async def handle(a, b): pass", "{app}:handle", "must take one argument, the payload"),
        ("handle = 3", "{app}:handle", "{app}:handle is a int, not a handler"),
        (f"{NOT_ASYNC}routes = {{'orders': handle}}", "{app}:routes", "['orders'] is not async"),
        ("routes = {}", "{app}:routes", "is an empty mapping; map each key to its async handler"),
    ],
)
def test_a_name_that_cannot_run_exits_2_with_one_line(
    source: str | None,
    name: str,
    said: str,
    write_app: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = write_app(source or RECORDING)
    spec = name.format(app=app)
    assert main(["run", spec, "--keys", KEY]) == EXIT_USAGE
    line = error_line(capsys)
    expected = said.format(app=app, cwd=Path.cwd())
    if expected.endswith("..."):
        assert expected[:-3] in line
    else:
        assert expected in line
    assert line.startswith("abe run: ")


def test_a_failed_import_shows_its_traceback_with_debug(
    write_app: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    app = write_app("def connect():\n    raise RuntimeError('no database')\n\nconnect()\n")
    assert main(["run", f"{app}:handle", "--keys", KEY, "--debug"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "in connect" in err  # the application's own frame
    assert err.strip().splitlines()[-1].startswith(f"abe run: importing '{app}' failed")


def test_no_keys_anywhere_exits_2_before_connecting(
    write_app: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    app = write_app(RECORDING)
    assert main(["run", f"{app}:handle"]) == EXIT_USAGE
    assert "no keys to read: pass --keys K1,K2, set ABE_MQ_KEYS" in error_line(capsys)


def test_keys_of_a_dict_that_has_no_handler_for_them_exit_2(
    write_app: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    app = write_app(RECORDING)
    assert main(["run", f"{app}:routes", "--keys", "orders,payments"]) == EXIT_USAGE
    assert (
        f"--keys names payments, which {app}:routes has no handler for; it handles orders, "
        f"refunds" in error_line(capsys)
    )


def test_metrics_without_prometheus_client_exit_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    assert main(["run", "app:handle", "--keys", KEY, "--metrics-port", "0"]) == EXIT_USAGE
    assert "pip install 'abe-core[metrics]'" in error_line(capsys)


# ---- running: graceful stop, routing, forced stop ----------------------------------------------


def test_sigterm_lets_running_handlers_finish_acks_them_and_exits_0(
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    app = write_app(RECORDING)  # imported from the current directory, not on sys.path before
    publish(KEY, range(20))
    monkeypatch.setenv("STOP_AFTER", "5")
    code = main(["run", f"{app}:handle", "--keys", KEY, "--group", "g", "--concurrency", "3"])
    assert code == 0
    done = handled(tmp_path)
    assert 5 <= len(done) <= 7  # the fifth, and up to two running beside it, then no more
    assert len(set(done)) == len(done)
    assert broker.pending(KEY, "g") == 20 - len(done)  # every handled one acknowledged
    assert "stopping (SIGTERM): no longer taking messages" in caplog.text
    assert f"stopped (SIGTERM): {len(done)} acknowledged, 0 retried" in caplog.text


def test_the_rest_is_handled_by_the_next_run_and_nothing_twice(
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = write_app(RECORDING)
    publish(KEY, range(12))
    argv = ["run", f"{app}:handle", "--keys", KEY, "--group", "g", "--concurrency", "2"]
    monkeypatch.setenv("STOP_AFTER", "4")
    assert main(argv) == 0
    first = len(handled(tmp_path))
    monkeypatch.setenv("STOP_AFTER", str(12 - first))  # this run's count: stop at the last one
    sys.modules.pop(app)  # a new process would import it afresh
    assert main(argv) == 0
    assert sorted(n for _, n in handled(tmp_path)) == list(range(12))
    assert broker.pending(KEY, "g") == 0


def test_a_dict_sends_each_key_to_its_handler_and_its_keys_are_the_default(
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = write_app(RECORDING)
    publish("orders", range(3))
    publish("refunds", range(10, 12))
    publish("payments", range(20, 22))  # no handler, not read
    monkeypatch.setenv("STOP_AFTER", "5")
    assert main(["run", f"{app}:routes", "--group", "g"]) == 0
    assert sorted(tuple(line) for line in records(tmp_path)) == [
        ("orders", "0", "orders"),
        ("orders", "1", "orders"),
        ("orders", "2", "orders"),
        ("refunds", "10", "refunds"),
        ("refunds", "11", "refunds"),
    ]
    assert "g" not in broker.groups("payments")  # never joined


def test_keys_pick_some_of_a_dicts_keys(
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = write_app(RECORDING)
    publish("orders", range(2))
    publish("refunds", range(2))
    monkeypatch.setenv("STOP_AFTER", "2")
    assert main(["run", f"{app}:routes", "--keys", "refunds", "--group", "g"]) == 0
    assert sorted(handled(tmp_path)) == [("refunds", 0), ("refunds", 1)]
    assert "g" not in broker.groups("orders")


def test_an_object_with_an_async_call_and_abe_mq_keys_and_group_from_the_environment(
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = write_app(RECORDING)
    publish("orders", range(2))
    monkeypatch.setenv("ABE_MQ_KEYS", "orders")
    monkeypatch.setenv("ABE_MQ_GROUP", "from-env")
    monkeypatch.setenv("STOP_AFTER", "2")
    assert main(["run", f"{app}:instance"]) == 0
    assert sorted(tuple(line) for line in records(tmp_path)) == [
        ("orders", "0", "instance"),
        ("orders", "1", "instance"),
    ]
    assert broker.pending("orders", "from-env") == 0


@pytest.mark.parametrize("case", [("SIGTERM", 143), ("SIGINT", 130)], ids=["TERM", "INT"])
def test_a_second_signal_stops_at_once_and_gives_the_message_back(
    case: tuple[str, int],
    write_app: Callable[[str], str],
    broker: MemoryBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal_name, code = case
    caplog.set_level("INFO")
    app = write_app(STUCK)
    publish(KEY, range(1))
    monkeypatch.setenv("SIGNAL", signal_name)
    assert main(["run", f"{app}:handle", "--keys", KEY, "--group", "g"]) == code
    assert f"{signal_name}: stopping at once; 1 running handler(s) are cancelled" in caplog.text
    assert broker.pending(KEY, "g") == 1
    # given back, not left to its lease: the next reader gets it at once, as attempt 2

    async def again() -> int:
        async with load_backend() as backend, backend.subscribe(group="g", keys=KEY) as sub:
            delivery = await asyncio.wait_for(anext(sub), 5)
            await delivery.ack()
            return delivery.attempt

    assert asyncio.run(again()) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers removed after the run


def test_log_lines_say_what_runs_where_without_secrets(
    write_app: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    app = write_app(RECORDING)
    publish(KEY, range(1))
    monkeypatch.setenv("STOP_AFTER", "1")
    assert main(["run", f"{app}:handle", "--keys", KEY, "--group", "g", "--concurrency", "4"]) == 0
    said = [record.getMessage() for record in caplog.records if record.name == "abe.run"]
    started = next(line for line in said if line.startswith("started "))
    assert f"started {app}:handle: reading orders as group g on <MemoryBackend" in started
    assert "(concurrency 4, shutdown timeout 30s)" in started
    assert "joined group g: taking messages" in said


def test_payloads_reach_the_handler_as_published(
    write_app: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = write_app(
        "import json, os, signal\n"
        "async def handle(payload):\n"
        "    open(os.environ['RECORD'], 'w').write(json.dumps(payload))\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    payload = {"n": 1, "name": "Zoë", "items": [1.5, None, True]}
    asyncio.run(_publish_one(payload))
    assert main(["run", f"{app}:handle", "--keys", KEY]) == 0
    assert json.loads((tmp_path / "handled.txt").read_text()) == payload


async def _publish_one(payload: dict[str, object]) -> None:
    async with load_backend() as backend:
        await backend.publish(KEY, payload)
