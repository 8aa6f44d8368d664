"""Child processes for brokers the fixtures start themselves: spawn, wait ready, stop, kill.

Readiness is a probe polled against a deadline (never a fixed sleep); a process that
exits while starting, or never gets ready, raises :class:`ServerStartError` with the
tail of its log. Every process is tracked and killed at interpreter exit as a last
resort, and, when spawned from the main thread, dies with its parent (``setpriv
--pdeathsig``) even if pytest itself is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


class ServerStartError(RuntimeError):
    """A broker process exited while starting or did not become ready before its deadline."""


class ToolMissing(RuntimeError):
    """A binary or Python package a step needs is not installed."""


_HANDED_OUT: set[int] = set()  # ports free_port() gave: a broker may be restarted on one


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a broker to listen on, and never handed out before here.

    It comes from below the kernel's range for the local ports of outgoing connections:
    a broker killed and restarted on its port (the crash and failover tests) must find
    it free, and a port from that range may meanwhile be taken by any client's
    connection (a Redis Cluster node once failed to rejoin so). pytest-xdist workers
    each take a slice of their own.
    """
    low, high = _listening_ports()
    start = random.randrange(high - low)
    for step in range(high - low):
        port = low + (start + step) % (high - low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:  # listened on, or closing connections still hold it
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {low}-{high - 1} on {host}")


def _listening_ports() -> tuple[int, int]:
    """[low, high) for this process: from 10000 to the kernel's first ephemeral port (Linux
    reports it; elsewhere 32768), this pytest-xdist worker's share of it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low, high = 10000, max(ephemeral, 20000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    share = (high - low) // max(workers, 1)
    index = int(worker) % max(workers, 1) if worker.isdigit() else 0
    return low + index * share, low + (index + 1) * share


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], object],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Call ``check`` until it returns without raising, polling with a short, growing interval.

    ``alive`` returns a reason string once the thing waited for is known dead (a process
    that exited), which ends the wait at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    interval = 0.02
    last: BaseException | None = None
    while True:
        if alive is not None and (dead := alive()) is not None:
            raise ServerStartError(f"{what}: {dead}")
        try:
            check()
        except Exception as exc:
            last = exc
        else:
            return
        if time.monotonic() >= deadline:
            raise ServerStartError(f"{what}: not ready after {timeout:.0f}s (last error: {last!r})")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def find_binary(name: str, *candidates: str) -> str:
    """The path of executable ``name`` on PATH or at one of ``candidates`` (sbin dirs etc.)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"{name} not found on PATH or at {', '.join(candidates) or '-'}")


def _tail(path: Path, start: int, limit: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").strip()
    if len(text) > limit:
        text = "..." + text[-limit:]
    return text or "(empty log)"


class ManagedProcess:
    """One restartable child process with an append-only log file and a readiness probe."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], object],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the running process, or None."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn the process and wait until its probe succeeds; raise with its log if not."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            offset = log.tell()
            argv = self.argv
            setpriv = shutil.which("setpriv")
            if setpriv and threading.current_thread() is threading.main_thread():
                # Tie the child to this thread's life: no orphan if pytest is killed.
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self._proc = proc

        def alive() -> str | None:
            code = proc.poll()
            if code is None:
                return None
            output = _tail(self.log_path, offset)
            return f"exited with code {code} while starting; its output:\n{output}"

        try:
            wait_until(self.ready, timeout=self.start_timeout, what=self.name, alive=alive)
        except ServerStartError as exc:
            self._reap(signal.SIGKILL, 5.0)
            if "its output" in str(exc):
                raise
            raise ServerStartError(f"{exc}\nits output:\n{_tail(self.log_path, offset)}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), escalating to SIGKILL after ``timeout`` seconds."""
        self._reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would: nothing gets flushed on the way out."""
        self._reap(signal.SIGKILL, 10.0)

    def _reap(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10.0)
        with _LIVE_LOCK:
            _LIVE.discard(proc)

    def log_text(self) -> str:
        """Everything the process has written so far (all runs), for assertions and debugging."""
        return _tail(self.log_path, 0, limit=1_000_000)


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: no broker process outlives the interpreter, whatever skipped teardown."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``: what a child broker process runs with."""
    env = dict(os.environ)
    env.update(extra)
    return env
