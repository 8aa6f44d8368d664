"""The conductor of a crash run: a producer, workers killed one by one, one broker crash.

:meth:`CrashRun.run` starts ``workers`` worker processes and the producer, then until
the producer is done SIGKILLs a random worker every ~``kill_every`` seconds (starting a
replacement at once), and once half the messages are confirmed kills the broker with
SIGKILL and starts it again (when the target has a broker it owns; with ``hold_down``,
once that many messages published after the kill were handled). Then it waits
until every confirmed message was handled, a stall (nothing new handled for
``stall_after`` seconds while messages wait) or the drain deadline; waits a quiet
period for late duplicates; stops the workers with SIGTERM; and hands what it saw to
:func:`abe_crash.verdict.judge`. Progress is read from the processes' files, polled
every 0.1 s against those deadlines: there is no event to wait for across processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Protocol

from abe.backends.message_queue.base.settings import BackendSettings
from abe.backends.message_queue.consumer import PREFETCH_MULTIPLIER
from abe.backends.message_queue.loader import load_backend_class
from abe_crash.records import Confirmed, Handled, Tail, message_id
from abe_crash.sizes import Sizes
from abe_crash.verdict import Commit, Evidence, Kill, Outage, Placed, Verdict, judge

__all__ = ["Crashable", "CrashRun", "Target"]

_POLL = 0.1
_STOP_TIMEOUT = 20.0
_HERE = Path(__file__).resolve().parent.parent
_LOG_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) ([\w.\-]+): ")


def _default_prefetch(backend: str, concurrency: int) -> int:
    """AsyncLoopConsumer's default bound on what it holds, with ABE_MQ_PREFETCH unset (the
    backend's own default: Kafka's is larger)."""
    settings_class = getattr(load_backend_class(backend), "settings_class", BackendSettings)
    default = next(f.default for f in fields(settings_class) if f.name == "prefetch")
    return max(int(default), PREFETCH_MULTIPLIER * concurrency)


class Crashable(Protocol):
    """A broker process the run may crash: SIGKILL, then start again with the same data."""

    def kill(self) -> None: ...

    def start(self) -> None: ...


@dataclass
class Target:
    """The broker of one run: the backend name, the variables its clients read, and the
    broker process to crash (None: not restarted, as for SQS)."""

    backend: str
    env: dict[str, str]
    broker: Crashable | None = None
    describe: str = ""
    """How the broker is set up (for the report), e.g. "redis-server, AOF fsync always"."""
    shared: bool = False
    """The broker outlives the run (SQS on the session's moto): delete the key afterwards."""
    hold_down: int = 0
    """Keep the killed broker down until this many messages published after the kill were
    handled (at most ``stall_after`` seconds), then start it (0: start it at once): for a
    cluster node, whose death the clients must survive on the other nodes first."""
    worker_env: Callable[[int], dict[str, str]] | None = None
    """Variables for worker number n (1, 2, ...) on top of ``env``, e.g. where it connects."""
    inspect_env: dict[str, str] = field(default_factory=dict)
    """Variables only the inspection gets: where Tansu stores, to list its batches."""


@dataclass
class _Worker:
    name: str
    process: subprocess.Popen[bytes]
    out: Path
    status: Path
    log: Path
    started_at: float
    tail: Tail = field(init=False)
    killed_at: float | None = None

    def __post_init__(self) -> None:
        self.tail = Tail(self.out)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _spawn(argv: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a child that dies with this thread (setpriv --pdeathsig), in a session of its own."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _tail_text(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return "\n    ".join(text[-lines:]) or "(no output)"


class CrashRun:
    """One crash run against `target`, with files in `directory`."""

    def __init__(self, target: Target, sizes: Sizes, directory: Path, *, key: str, group: str):
        self.target = target
        self.sizes = sizes
        self.directory = directory
        self.key = key
        self.group = group
        self.seed = sizes.seed or random.SystemRandom().randrange(1, 2**31)
        self._random = random.Random(self.seed)
        self._workers: list[_Worker] = []
        self._made = 0
        self._kills: list[Kill] = []
        self._outages: list[Outage] = []
        self._confirmed: list[Confirmed] = []
        self._handled: list[Handled] = []
        self._confirmed_numbers: set[int] = set()
        self._handled_numbers: set[int] = set()
        self._progress_at = 0.0
        self._failures: list[str] = []
        self._notes: list[str] = []
        self._inspected = False
        self._stall: str | None = None
        self._producer_error: str | None = None
        self._published_at: float | None = None
        self._restart: threading.Thread | None = None
        self._restart_error: BaseException | None = None
        self._killed_at: float | None = None
        self._after_kill: set[int] = set()
        self._resumed = threading.Event()
        """Set once ``hold_down`` messages published after the broker was killed were handled."""
        self._handled_after_kill: set[int] = set()
        self.env = {
            **os.environ,
            **target.env,
            "ABE_MQ_REDELIVERY_TIMEOUT": f"{sizes.redelivery_timeout:g}",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(_HERE), os.environ.get("PYTHONPATH", "")])
            ),
        }

    # ---- processes ----------------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        self._made += 1
        name = f"w{self._made}"
        out = self.directory / f"handled-{name}.log"
        status = self.directory / f"status-{name}.json"
        log_path = self.directory / f"worker-{name}.log"
        argv = [
            sys.executable, "-m", "abe_crash.worker", "--backend", self.target.backend,
            "--key", self.key, "--group", self.group, "--concurrency",
            str(self.sizes.concurrency), "--work", str(self.sizes.handler_seconds),
            "--max-attempts", str(self.sizes.max_attempts),
            "--out", str(out), "--status", str(status),
        ]  # fmt: skip
        env = self.env
        if self.target.worker_env is not None:
            env = {**env, **self.target.worker_env(self._made)}
        with log_path.open("ab") as log:
            process = _spawn(argv, env, log)
        worker = _Worker(name, process, out, status, log_path, time.monotonic())
        self._workers.append(worker)
        self._event(f"start {worker.started_at:.6f} {worker.pid} {name}")
        return worker

    def _event(self, line: str) -> None:
        """Note a kill or a broker crash in events.log (times as in the other files)."""
        with (self.directory / "events.log").open("a") as events:
            events.write(line + "\n")

    def _start_producer(self) -> subprocess.Popen[bytes]:
        sizes = self.sizes
        argv = [
            sys.executable, "-m", "abe_crash.producer", "--backend", self.target.backend,
            "--key", self.key, "--messages", str(sizes.messages), "--rate", f"{sizes.rate:.3f}",
            "--publishers", str(sizes.publishers), "--give-up", str(sizes.give_up_after),
            "--out", str(self.directory / "confirmed.log"),
        ]  # fmt: skip
        with (self.directory / "producer.log").open("ab") as log:
            return _spawn(argv, self.env, log)

    def _status(self, worker: _Worker) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(worker.status.read_text())
        except (OSError, ValueError):
            return {}
        return status

    def _consuming(self, worker: _Worker) -> bool:
        """Whether the worker's consumer runs (its status says so)."""
        return bool(self._status(worker).get("running"))

    def _in_stream(self, worker: _Worker) -> bool:
        """Whether the worker has had messages: handled some, or holds some now."""
        status = self._status(worker)
        return bool(status.get("running")) and bool(
            status.get("processed") or status.get("held") or status.get("handling")
        )

    def _kill_one(self) -> None:
        """SIGKILL a random worker that has had messages, and start its replacement.

        A worker still starting, connecting or joining holds nothing: killing it tests no
        guarantee and, on a loaded machine, only measures how long a worker takes to
        start, so it is spared (no kill this time if every worker is starting).
        """
        alive = [w for w in self._workers if w.killed_at is None and w.alive and self._in_stream(w)]
        if not alive:
            return
        victim = self._random.choice(alive)
        victim.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        self._kills.append(Kill(victim.killed_at, victim.pid))
        self._event(f"kill {victim.killed_at:.6f} {victim.pid} {victim.name}")
        self._start_worker()

    def _crash_broker(self) -> None:
        """In a thread: kill -9 the broker and start it again (same port, same data)."""
        broker = self.target.broker
        assert broker is not None
        killed_at = time.monotonic()
        try:
            broker.kill()
            self._killed_at = killed_at
            self._event(f"broker-killed {killed_at:.6f}")
            if self.target.hold_down:  # at most half the stall limit: the rest is the node's
                self._resumed.wait(self.sizes.stall_after / 2)
            broker.start()
        except BaseException as exc:
            self._restart_error = exc
            return
        ready_at = time.monotonic()
        self._outages.append(Outage(killed_at, ready_at))
        self._event(f"broker-ready {ready_at:.6f}")

    # ---- observing ----------------------------------------------------------------------------

    def _read(self, confirmed: Tail) -> None:
        now = time.monotonic()
        waiting_before = len(self._confirmed_numbers - self._handled_numbers) > 0
        for line in confirmed.new_lines():
            record = Confirmed.parse(line)
            self._confirmed.append(record)
            self._confirmed_numbers.add(record.number)
            if self._killed_at is not None and record.started >= self._killed_at:
                self._after_kill.add(record.number)
        for worker in self._workers:
            for line in worker.tail.new_lines():
                handled = Handled.parse(line)
                self._handled.append(handled)
                if handled.number in self._after_kill:
                    self._handled_after_kill.add(handled.number)
                    if len(self._handled_after_kill) >= self.target.hold_down:
                        self._resumed.set()
                if handled.number not in self._handled_numbers:
                    self._handled_numbers.add(handled.number)
                    self._progress_at = now
        if not waiting_before and self._waiting():
            self._progress_at = now

    def _waiting(self) -> int:
        return len(self._confirmed_numbers - self._handled_numbers)

    def _check_workers(self) -> None:
        """A worker that exited without being killed is a failure; replace it and go on."""
        for worker in self._workers:
            if worker.killed_at is None and not worker.alive:
                worker.killed_at = time.monotonic()  # not a kill: just out of the pool
                self._failures.append(
                    f"worker {worker.name} (pid {worker.pid}) exited by itself with code "
                    f"{worker.process.returncode}; its last output:\n    {_tail_text(worker.log)}"
                )
                self._start_worker()

    def _describe_workers(self, now: float, what: str) -> str:
        """`what` happened: which messages wait, and what each live worker did and holds."""
        waiting = sorted(self._confirmed_numbers - self._handled_numbers)
        shown = ", ".join(message_id(n) for n in waiting[:10])
        recent = sum(1 for h in self._handled if h.at > now - 10.0)
        lines = [
            f"{what}: {len(waiting)} confirmed message(s) waiting ({shown}"
            f"{', ...' if len(waiting) > 10 else ''}), the last new one handled "
            f"{now - self._progress_at:.1f}s ago, {recent} handled in the last 10s; "
            f"workers alive:"
        ]
        for worker in self._workers:
            if worker.killed_at is not None:
                continue
            mine = [h.at for h in self._handled if h.pid == worker.pid]
            last = f"{now - max(mine):.1f}s ago" if mine else "never"
            try:
                status = json.loads(worker.status.read_text())
                held = (
                    f"handling {status['handling'] or 'nothing'}, holding {status['held']} "
                    f"unsettled, processed {status['processed']}"
                )
            except (OSError, ValueError, KeyError):
                held = "no status written"
            lines.append(
                f"  {worker.name} pid {worker.pid}: up {now - worker.started_at:.1f}s, handled "
                f"{len(mine)}, last {last}; {held}; last log lines:\n    "
                f"{_tail_text(worker.log, 4)}"
            )
        return "\n".join(lines)

    # ---- phases -------------------------------------------------------------------------------

    def run(self) -> Verdict:
        """Conduct the whole run and judge it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started_at = self._progress_at = time.monotonic()
        producer: subprocess.Popen[bytes] | None = None
        try:
            for _ in range(self.sizes.workers):
                self._start_worker()
            producer = self._start_producer()
            self._conduct(producer, Tail(self.directory / "confirmed.log"))
        finally:
            self._stop(producer)
        if self._waiting() or self._dead_lettered():
            self._inspect()
        return self.verdict()

    def _dead_lettered(self) -> int:
        """Messages the workers dead-lettered, from their last status."""
        total = 0
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError, KeyError):
                total += int(json.loads(worker.status.read_text())["dead_lettered"])
        return total

    def _inspect(self) -> None:
        """Read what is left on the key and its dead-letter key into left-on-broker.jsonl."""
        out = self.directory / "left-on-broker.jsonl"
        argv = [sys.executable, "-m", "abe_crash.inspect", "--backend", self.target.backend]
        argv += ["--key", self.key, "--out", str(out)]
        if self.target.backend == "kafka":  # also what the broker returns, without abe
            argv += ["--raw", str(self.directory / "raw-on-broker.jsonl")]
            argv += ["--tansu-s3"] if self.target.inspect_env else []
        env = {**self.env, **self.target.inspect_env}
        try:  # the inspector stops itself after 150 s (twice with --raw); only a safety net
            subprocess.run(argv, env=env, check=True, timeout=360, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            stderr = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
            self._notes.append(f"the inspection of the broker failed: {exc} {stderr}")
        self._inspected = out.exists()  # what it read so far says where some messages are

    def _next_kill(self, now: float) -> float:
        return now + self.sizes.kill_every * self._random.uniform(0.5, 1.5)

    def _conduct(self, producer: subprocess.Popen[bytes], confirmed: Tail) -> None:
        sizes = self.sizes
        next_kill = self._next_kill(self.started_at)
        # A safety net only: the stall rule, the drain deadline and the producer's give-up
        # end a run that hangs; this allows a producer five times slower than planned.
        hard_deadline = (
            self.started_at + 5 * sizes.publish_duration + sizes.give_up_after + sizes.drain_seconds
        )
        drain_deadline: float | None = None
        drained_at: float | None = None
        last_line_at = 0.0
        quiet = max(sizes.redelivery_timeout, 5.0) + 2.0
        seen = 0
        while True:
            now = time.monotonic()
            self._read(confirmed)
            producing = producer.poll() is None
            if not producing and drain_deadline is None:
                drain_deadline = now + sizes.drain_seconds
                if producer.returncode == 0:
                    self._published_at = now
                else:
                    self._producer_error = (
                        f"exit code {producer.returncode}; its last output:\n    "
                        f"{_tail_text(self.directory / 'producer.log')}"
                    )
            if producing and now >= next_kill:
                self._kill_one()
                next_kill = self._next_kill(now)
            self._check_workers()
            if (
                self.target.broker is not None
                and self._restart is None
                and len(self._confirmed_numbers) >= sizes.messages // 2
            ):
                self._restart = threading.Thread(target=self._crash_broker, name="broker-crash")
                self._restart.start()
            restarting = self._restart is not None and self._restart.is_alive()
            waiting = self._waiting()
            if len(self._handled) != seen:
                seen, last_line_at = len(self._handled), now
            if not producing and not restarting and not waiting:
                # Drained. Late duplicates (redeliveries of what killed workers handled but
                # never acknowledged) may still come: wait until none came for a while.
                drained_at = drained_at or now
                if now - max(last_line_at, drained_at) >= quiet or now - drained_at >= 3 * quiet:
                    return
            else:
                drained_at = None
            if waiting and now - self._progress_at > sizes.stall_after:
                self._stall = self._describe_workers(now, "stall seen live")
                return
            if (drain_deadline is not None and now > drain_deadline) or now > hard_deadline:
                self._stall = self._describe_workers(now, "deadline passed")
                return
            time.sleep(_POLL)  # polling the processes' files: no event crosses processes

    def _stop(self, producer: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM every worker (and the producer if still running); SIGKILL what hangs."""
        if self._restart is not None:
            self._resumed.set()  # a broker held down comes back now: the run is over
            self._restart.join()
        running = [w for w in self._workers if w.killed_at is None and w.alive]
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for worker in running:
            try:
                code = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                self._failures.append(
                    f"worker {worker.name} (pid {worker.pid}) did not stop within "
                    f"{_STOP_TIMEOUT:.0f}s of SIGTERM; its last output:\n    "
                    f"{_tail_text(worker.log)}"
                )
                continue
            if code == -signal.SIGTERM and not self._consuming(worker):
                continue  # still starting: Python's default SIGTERM ended it, holding nothing
            if code != 0:
                self._failures.append(
                    f"worker {worker.name} (pid {worker.pid}) exited with code {code} on "
                    f"SIGTERM; its last output:\n    {_tail_text(worker.log)}"
                )
        self.ended_at = time.monotonic()
        broker_files = getattr(self.target.broker, "directory", None)
        for log in Path(broker_files).glob("*.log") if broker_files else ():
            shutil.copy(log, self.directory / f"broker-{log.name}")  # kept past the broker
        if self._restart_error is not None:
            self._failures.append(f"the broker did not come back: {self._restart_error}")

    def cleanup(self) -> None:
        """Delete the run's key from a shared broker (a test-owned one goes away whole)."""
        if not self.target.shared:
            return
        argv = [sys.executable, "-m", "abe_crash.cleanup", "--backend", self.target.backend]
        subprocess.run(
            [*argv, "--key", self.key], env=self.env, check=True, timeout=60, capture_output=True
        )

    # ---- verdict ------------------------------------------------------------------------------

    def evidence(self) -> Evidence:
        """What the run saw, read once more from the files (the last lines included)."""
        confirmed = [
            Confirmed.parse(line) for line in Tail(self.directory / "confirmed.log").new_lines()
        ]
        handled = [Handled.parse(line) for w in self._workers for line in Tail(w.out).new_lines()]
        left: list[dict[str, object]] | None = None
        if self._inspected:
            text = (self.directory / "left-on-broker.jsonl").read_text()
            left = [json.loads(line) for line in text.splitlines() if line]
        logs: Counter[str] = Counter()
        for worker in self._workers:
            with contextlib.suppress(OSError):
                for match in _LOG_LINE.finditer(worker.log.read_text(errors="replace")):
                    logs[f"workers {match.group(1)} {match.group(2)}"] += 1
        with contextlib.suppress(OSError):
            for match in _LOG_LINE.finditer((self.directory / "producer.log").read_text()):
                logs[f"producer {match.group(1)} {match.group(2)}"] += 1
        commits: dict[int, list[Commit]] | None = None
        placed: list[Placed] = []
        if self.target.backend == "kafka":  # offsets: where Kafka's acks and records are
            commits = {w.pid: self._commits(w) for w in self._workers}
            with contextlib.suppress(OSError):
                for line in (self.directory / "placed-kafka.log").read_text().splitlines():
                    number, _, partition, offset, *_ = line.split()
                    if partition != "-":
                        placed.append(Placed(int(number), int(partition), int(offset)))
        read_raw: dict[int, list[str]] | None = None
        with contextlib.suppress(OSError):
            text = (self.directory / "raw-on-broker.jsonl").read_text()
            ends = [json.loads(line) for line in text.splitlines() if '"raw_end"' in line]
            if ends and ends[0]["complete"]:  # only a read to the end says what is missing
                read_raw = {}
                for line in text.splitlines():
                    record = json.loads(line)
                    if isinstance(record.get("n"), int):
                        where = f"{record['partition']}@{record['offset']}"
                        read_raw.setdefault(record["n"], []).append(where)
        return Evidence(
            commits=commits,
            placed=placed,
            read_raw=read_raw,
            broker=self.target.backend,
            messages=self.sizes.messages,
            confirmed=confirmed,
            handled=handled,
            kills=list(self._kills),
            outages=list(self._outages),
            workers=self.sizes.workers,
            # what a worker holds (AsyncLoopConsumer's default prefetch: ABE_MQ_PREFETCH or
            # 4 per slot, whichever is more) and one round of its handlers' acknowledgements
            # not yet flushed to the broker
            window=_default_prefetch(self.target.backend, self.sizes.concurrency)
            + self.sizes.concurrency,
            stall_after=self.sizes.stall_after,
            started_at=self.started_at,
            published_at=self._published_at,
            ended_at=self.ended_at,
            producer_error=self._producer_error,
            worker_failures=list(self._failures),
            stall_report=self._stall,
            dead_lettered=self._dead_lettered(),
            left_on_broker=left,
            notes=list(self._notes),
            log_lines=dict(logs),
            seed=self.seed,
        )

    def _commits(self, worker: _Worker) -> list[Commit]:
        """The offset commits a Kafka worker completed (from its commits- file)."""
        path = worker.out.with_name(f"commits-{worker.out.name}")
        lines = Tail(path).new_lines()
        return [Commit(*map(float, line.split())) for line in lines]

    def verdict(self) -> Verdict:
        """Judge the evidence; the figures and every duplicate are also written to the directory."""
        verdict = judge(self.evidence())
        verdict.figures["workers_started"] = self._made
        (self.directory / "figures.json").write_text(json.dumps(verdict.figures, indent=2))
        with (self.directory / "duplicates.txt").open("w") as out:
            for d in verdict.duplicates:
                out.write(
                    f"{message_id(d.number)} {d.reason}: pid {d.before.pid} attempt "
                    f"{d.before.attempt} at {d.before.at - self.started_at:.3f}s, again pid "
                    f"{d.again.pid} attempt {d.again.attempt} at "
                    f"{d.again.at - self.started_at:.3f}s\n"
                )
        return verdict
