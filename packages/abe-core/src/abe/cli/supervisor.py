"""`abe run --workers P`: one supervisor process keeping P worker processes running.

Each worker is `abe run` started again for one process (`python -m abe run ...
--control-fd N`), in a session of its own, so a terminal's Ctrl-C reaches the supervisor
alone and the supervisor decides what each worker hears (see `abe.cli.control`):

- the first SIGTERM or SIGINT asks every worker to stop taking messages and finish; the
  supervisor exits 0 once all have exited 0. A second stops them at once: exit 128 + signal.
- a worker that ends unasked is started again after an exponential backoff (capped); the
  backoff starts over once a worker has run for a while.
- a worker that ends before it has joined its group on the broker, `max_start_failures`
  times in a row, makes the supervisor stop the others and exit 1; one that ends with 2
  (bad usage or settings, which no restart fixes) makes it exit 2 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from abe.cli.connect import CLOSE_TIMEOUT
from abe.cli.control import WorkerChannel
from abe.cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from abe.cli.health import Endpoint, Response, Route, serve

if TYPE_CHECKING:
    from abe.cli.metrics import SupervisorMetrics

__all__ = ["RestartPolicy", "Supervisor", "describe_exit", "on_signals"]

log = logging.getLogger("abe.run")

_STATUS_TIMEOUT = 2.0


def describe_exit(code: int) -> str:
    """`exited with 1`, or `was killed by SIGKILL` for a negative return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor starts a worker again, and when it gives up."""

    first_delay: float = 0.5
    """Seconds before the first restart; doubled for each unasked end in a row."""
    max_delay: float = 30.0
    """The longest wait before a restart."""
    stable_after: float = 30.0
    """A worker that ran this long after joining its group starts the backoff over."""
    max_start_failures: int = 5
    """Ends before joining the group, in a row, after which the supervisor gives up."""

    def delay(self, crashes: int) -> float:
        """Seconds before restarting after `crashes` unasked ends in a row."""
        return float(min(self.max_delay, self.first_delay * 2 ** (crashes - 1)))


@dataclass
class _Slot:
    """One of the P places a worker runs in, and the worker in it now (if any)."""

    number: int
    process: asyncio.subprocess.Process | None = None
    channel: WorkerChannel | None = None
    started_at: float | None = None
    """When the current worker said it had joined its group (None: not yet)."""
    crashes: int = 0
    """Unasked ends in a row, for the backoff."""
    start_failures: int = 0
    """Ends before joining the group, in a row."""
    restart: asyncio.TimerHandle | None = None
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        pid = f" (pid {self.process.pid})" if self.process is not None else ""
        return f"worker {self.number}{pid}"


class Supervisor:
    """Starts `workers` processes from `argv_for(control_fd)` and keeps them running.

    `run()` returns the exit code: 0 after a graceful stop of all, 1 when workers kept
    failing to start (or one did not stop cleanly), 2 when a worker reported bad usage or
    settings, 128 + signal after a second signal.
    """

    def __init__(
        self,
        argv_for: Callable[[int], Sequence[str]],
        workers: int,
        *,
        shutdown_timeout: float,
        env: Mapping[str, str] | None = None,
        metrics: SupervisorMetrics | None = None,
        http: tuple[str, int] | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._argv_for = argv_for
        self._slots = [_Slot(number) for number in range(1, workers + 1)]
        self._shutdown_timeout = shutdown_timeout
        self._env = dict(os.environ if env is None else env)
        self.metrics = metrics
        self._http = http
        self.policy = policy or RestartPolicy()
        self.restarts = 0
        """Workers started again after one ended unasked."""
        self.endpoint: Endpoint | None = None
        self._events: asyncio.Queue[tuple[str, _Slot | None, int]] = asyncio.Queue()
        self._stopping = False
        self._code = EXIT_OK
        self._forced: int | None = None
        self._unclean: list[str] = []
        self._kill_timer: asyncio.TimerHandle | None = None
        self.changes = asyncio.Condition()
        """Notified whenever a worker starts, joins its group, or ends (for tests, mostly)."""

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    @property
    def stopping(self) -> bool:
        """Whether the workers have been asked to stop."""
        return self._stopping

    def alive(self) -> int:
        """How many workers are running now."""
        return sum(slot.process is not None for slot in self._slots)

    async def run(self) -> int:
        """Supervise until every worker has stopped; the exit code."""
        loop = asyncio.get_running_loop()
        installed = on_signals(
            loop, lambda signum: self._events.put_nowait(("signal", None, signum))
        )
        try:
            if self._http is not None:
                self.endpoint = await serve(*self._http, self._routes())
                log.info(
                    "serving metrics and health on %s (/metrics, /healthz, /readyz)",
                    self.endpoint.url,
                )
            log.info("supervisor %d: starting %d workers", os.getpid(), len(self._slots))
            for slot in self._slots:
                await self._start(slot)
            while not (self._stopping and self.alive() == 0):
                kind, which, value = await self._events.get()
                if kind == "signal":
                    self._on_signal(value)
                elif kind == "exited" and which is not None:
                    await self._on_exit(which, value)
                elif kind == "restart" and which is not None and not self._stopping:
                    self.restarts += 1
                    await self._start(which)
                await self._notify()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await self._clean_up()
        if self._forced is not None:
            return self._forced
        if self._code == EXIT_OK and self._unclean:
            log.error("not every worker stopped cleanly: %s", "; ".join(self._unclean))
            return EXIT_FAILURE
        if self._code == EXIT_OK:
            log.info("all workers stopped")
        return self._code

    # ---- starting and losing workers ------------------------------------------------------

    async def _start(self, slot: _Slot) -> None:
        slot.restart = None
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv_for(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # the terminal's Ctrl-C goes to the supervisor only
                env=self._env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            log.error("could not start worker %d (%s)", slot.number, exc)
            await self._on_exit(slot, EXIT_FAILURE, spawned=False)
            return
        finally:
            theirs.close()
        slot.process = process
        slot.started_at = None
        slot.channel = await WorkerChannel.open(ours, lambda: self._started(slot, process))
        slot.waiter = asyncio.get_running_loop().create_task(self._wait(slot, process))
        log.info("started %s", slot.name)

    async def _wait(self, slot: _Slot, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._events.put_nowait(("exited", slot, code))

    def _started(self, slot: _Slot, process: asyncio.subprocess.Process) -> None:
        if slot.process is process and slot.started_at is None:
            slot.started_at = asyncio.get_running_loop().time()
            slot.start_failures = 0
            log.info("%s joined its group and takes messages", slot.name)
            self._events.put_nowait(("joined", slot, 0))

    async def _notify(self) -> None:
        async with self.changes:
            self.changes.notify_all()

    def joined(self) -> int:
        """How many workers have joined their group and take messages now."""
        return sum(slot.process is not None and slot.started_at is not None for slot in self._slots)

    async def _on_exit(self, slot: _Slot, code: int, *, spawned: bool = True) -> None:
        name, started_at = slot.name, slot.started_at
        if spawned and slot.process is not None:
            if self.metrics is not None:
                self.metrics.worker_exited(slot.process.pid)
            slot.process = None
        if slot.channel is not None:
            await slot.channel.close()
            slot.channel = None
        if self._stopping:
            if code != EXIT_OK and self._forced is None:
                self._unclean.append(f"{name} {describe_exit(code)}")
            return
        how = describe_exit(code)
        if code == EXIT_USAGE and started_at is None:
            log.error("%s %s: bad usage or settings (said above); stopping", name, how)
            self._stop(EXIT_USAGE)
            return
        now = asyncio.get_running_loop().time()
        if started_at is None:
            slot.start_failures += 1
            if slot.start_failures >= self.policy.max_start_failures:
                log.error(
                    "%s %s before joining its group, %d times in a row; giving up",
                    name,
                    how,
                    slot.start_failures,
                )
                self._stop(EXIT_FAILURE)
                return
        if started_at is not None and now - started_at >= self.policy.stable_after:
            slot.crashes = 0
        slot.crashes += 1
        delay = self.policy.delay(slot.crashes)
        if code == EXIT_OK:
            how = "exited with 0 without being asked to"
        log.warning("%s %s; starting it again in %.1fs", name, how, delay)
        slot.restart = asyncio.get_running_loop().call_later(
            delay, self._events.put_nowait, ("restart", slot, 0)
        )

    # ---- stopping -------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stopping:
            log.info(
                "%s: stopping %d workers; each finishes its running handlers (up to %gs). "
                "A second signal stops them at once",
                name,
                self.alive(),
                self._shutdown_timeout,
            )
            self._stop(EXIT_OK)
        elif self._forced is None:
            log.warning("%s again: stopping every worker at once", name)
            self._forced = 128 + signum
            for slot in self._slots:
                if slot.channel is not None:
                    slot.channel.send(f"now {signum}")

    def _stop(self, code: int) -> None:
        """Ask every worker to finish, and give up waiting for them after a bound."""
        self._stopping = True
        self._code = code
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
            if slot.channel is not None:
                slot.channel.send("stop")
        grace = self._shutdown_timeout + CLOSE_TIMEOUT + 5.0
        self._kill_timer = asyncio.get_running_loop().call_later(grace, self._kill, grace)

    def _kill(self, grace: float) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                log.error("%s did not stop within %gs; killing it", slot.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()

    async def _clean_up(self) -> None:
        """Kill what is left (run() itself was cancelled or failed), close everything."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
                await slot.process.wait()
            if slot.waiter is not None:
                slot.waiter.cancel()
                await asyncio.gather(slot.waiter, return_exceptions=True)
            if slot.channel is not None:
                await slot.channel.close()
                slot.channel = None
        if self.endpoint is not None:
            await self.endpoint.close()

    # ---- the endpoint ---------------------------------------------------------------------

    def _routes(self) -> dict[str, Route]:
        metrics = self.metrics

        async def render_metrics() -> Response:
            if metrics is None:
                return Response.text(404, "metrics are not collected")
            body = await asyncio.to_thread(metrics.render)
            return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

        async def healthz() -> Response:
            return Response.text(200, "ok")

        async def readyz() -> Response:
            return await self._readiness()

        return {"/metrics": render_metrics, "/healthz": healthz, "/readyz": readyz}

    async def _readiness(self) -> Response:
        """200 when every worker runs and says it is ready, else 503 with each one's state."""
        if self._stopping:
            return Response.text(503, "not ready: stopping")

        async def state(slot: _Slot) -> str:
            if slot.channel is None or slot.process is None:
                return "unready: restarting"
            return await slot.channel.status(_STATUS_TIMEOUT)

        states = await asyncio.gather(*(state(slot) for slot in self._slots))
        lines = [f"{slot.name}: {said}" for slot, said in zip(self._slots, states, strict=True)]
        ready = all(said == "ready" for said in states)
        return Response.text(200 if ready else 503, "\n".join(lines))


def on_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> list[int]:
    """Call `handler(signum)` on SIGINT and SIGTERM; the signals it could install."""
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handler, signum)
        except (NotImplementedError, RuntimeError):
            continue
        installed.append(int(signum))
    return installed
