"""`abe run MODULE:NAME`: a worker service from the command line, with nothing hand-written.

NAME is an async function `handle(payload)`, or a mapping of key to such functions (each
delivery then goes to its key's handler). `abe run` builds the configured backend, runs
an AsyncLoopConsumer on NAME, and stops on SIGTERM or SIGINT: the first stops taking
messages and lets running handlers finish and be acknowledged (exit 0); a second cancels
them at once, their messages going back to the broker (exit 128 + signal: 130 or 143).
`--workers P` runs P such processes under a supervisor (`abe.cli.supervisor`);
`--metrics-port` serves /metrics, /healthz and /readyz (`abe.cli.health`).

Exit codes: 0 stopped when asked; 1 the broker or the run failed; 2 bad usage, a module
or NAME that does not load, or bad settings; 130 / 143 stopped at once by a second signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from abe.backends.message_queue.base.backend import DEFAULT_GROUP, BaseBackend
from abe.backends.message_queue.base.interface import Backend
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.cli.arguments import positive_int, positive_seconds
from abe.cli.connect import close_backend, load
from abe.cli.control import SupervisorLink
from abe.cli.errors import EXIT_OK, EXIT_USAGE, CommandError
from abe.cli.health import Endpoint, Response, Route, serve
from abe.cli.supervisor import RestartPolicy, Supervisor, on_signals
from abe.cli.target import Target, load_target, split_keys
from abe.settings import KEYS
from abe.types import MessageQueueBackendProtocol

if TYPE_CHECKING:
    from abe.cli.metrics import ConsumerMetrics

__all__ = ["GROUP_VARIABLE", "Worker", "add_parser", "run", "supervisor_for", "worker_argv"]

log = logging.getLogger("abe.run")

GROUP_VARIABLE = "ABE_MQ_GROUP"
"""The consumer group `abe run` joins when `--group` is not given."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
"""abe run's log lines, when the application has not set up logging itself."""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_JOIN_POLL = 0.05
"""How often a starting worker looks whether it has joined its group (nothing to await)."""

_METRICS_MISSING = (
    "--metrics-port needs prometheus-client, which abe-core does not install by itself: "
    "pip install 'abe-core[metrics]'"
)


class Worker:
    """One worker process: a consumer on `target`, stopped by signals or its supervisor.

    `run()` returns the exit code: 0 after a graceful stop, 128 + signal after a forced
    one. A consumer that ends unasked is a CommandError (exit 1); an error of the backend
    (unreachable, bad settings) is raised as it is.
    """

    def __init__(
        self,
        target: Target,
        *,
        group: str | None,
        concurrency: int = 1,
        max_attempts: int = 5,
        shutdown_timeout: float = 30.0,
        metrics: ConsumerMetrics | None = None,
        render_metrics: Callable[[], bytes] | None = None,
        http: tuple[str, int] | None = None,
        control_fd: int | None = None,
    ) -> None:
        self.target = target
        self.group = group
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.shutdown_timeout = shutdown_timeout
        self.metrics = metrics
        self._render_metrics = render_metrics
        self._http = http
        self._control_fd = control_fd
        self.consumer: AsyncLoopConsumer | None = None
        self.endpoint: Endpoint | None = None
        self.stop_reason: str | None = None
        self.forced: int | None = None
        self.joined = asyncio.Event()
        """Set once the consumer has joined its group on the broker and takes messages."""
        self._link: SupervisorLink | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def run(self) -> int:
        """Build the backend, consume until stopped, close the backend; the exit code."""
        loaded = load()
        backend = loaded.backend
        try:
            if loaded.fallback:
                log.warning(
                    "no provider is installed and QUEUE_BACKEND is not set: running on the "
                    "in-process memory backend, which receives nothing from other processes"
                )
            elif isinstance(backend, BaseBackend) and not backend.capabilities.remote:
                log.warning(
                    "the %s backend keeps messages inside this process: this worker receives "
                    "only what this process publishes",
                    backend.name,
                )
            return await self._consume(backend)
        finally:
            await close_backend(backend)

    async def _consume(self, backend: Backend | MessageQueueBackendProtocol) -> int:
        loop = asyncio.get_running_loop()
        metrics = self.metrics
        consumer = self.consumer = AsyncLoopConsumer(
            backend,
            self.group,
            keys=self.target.keys,
            concurrency=self.concurrency,
            max_attempts=self.max_attempts,
            shutdown_timeout=self.shutdown_timeout,
            middleware=[metrics] if metrics is not None else [],
            on_settled=metrics.settled if metrics is not None else None,
        )
        installed = on_signals(loop, self._on_signal)
        watcher: asyncio.Task[None] | None = None
        try:
            await self._open_endpoints()
            if (early := self.forced) is not None:  # a second signal while setting up
                return early
            self._task = loop.create_task(consumer.run(self.target.handler))
            log.info(
                "started %s: reading %s as group %s on %r (concurrency %d, shutdown timeout %gs)",
                self.target.spec,
                ", ".join(self.target.keys) if self.target.keys else "ABE_MQ_KEYS",
                self.group or DEFAULT_GROUP,
                backend,
                self.concurrency,
                self.shutdown_timeout,
            )
            watcher = loop.create_task(self._watch_join(consumer, self._task))
            try:
                await self._task
            except asyncio.CancelledError:
                if self.forced is None:
                    raise
            if self._stopping is not None:
                await asyncio.gather(self._stopping, return_exceptions=True)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            for signum in installed:
                loop.remove_signal_handler(signum)
            if self._link is not None:
                await self._link.close()
            if self.endpoint is not None:
                await self.endpoint.close()
        return self._finish(consumer)

    async def _open_endpoints(self) -> None:
        """The metrics and health endpoint, and the supervisor's control link, if asked for."""
        if self._http is not None:
            self.endpoint = await serve(*self._http, self._routes())
            log.info(
                "serving metrics and health on %s (/metrics, /healthz, /readyz)",
                self.endpoint.url,
            )
        if self._control_fd is not None:
            self._link = await SupervisorLink.open(
                self._control_fd, stop=self.request_stop, now=self.force, status=self.status
            )

    def _finish(self, consumer: AsyncLoopConsumer) -> int:
        """Log what the consumer did; the exit code, or CommandError if it ended unasked."""
        stats = consumer.stats
        log.info(
            "stopped (%s): %d acknowledged, %d retried, %d dead-lettered",
            self.stop_reason or "unasked",
            stats.processed,
            stats.retried,
            stats.dead_lettered,
        )
        if self.forced is not None:
            return self.forced
        if self.stop_reason is None:
            raise CommandError(
                "the consumer ended without being asked to stop (its backend was closed)"
            )
        return EXIT_OK

    async def _watch_join(self, consumer: AsyncLoopConsumer, task: asyncio.Task[None]) -> None:
        """Say once that the consumer has joined its group (the subscription opens inside
        `run()`, with no event to await, so this looks every few milliseconds)."""
        while not consumer.ready:
            if task.done() or self.stop_reason is not None:
                return
            await asyncio.sleep(_JOIN_POLL)
        self.joined.set()
        log.info("joined group %s: taking messages", self.group or DEFAULT_GROUP)
        if self._link is not None:
            self._link.started()

    def _on_signal(self, signum: int) -> None:
        if self.stop_reason is None:
            self.request_stop(signal.Signals(signum).name)
        else:
            self.force(signum)

    def request_stop(self, reason: str) -> None:
        """Stop taking messages; running handlers finish (up to the shutdown timeout)."""
        if self.stop_reason is not None or self.consumer is None:
            return
        self.stop_reason = reason
        log.info(
            "stopping (%s): no longer taking messages; %d running handler(s) finish first "
            "(up to %gs). A second signal stops at once",
            reason,
            self.consumer.stats.in_flight,
            self.shutdown_timeout,
        )
        self._stopping = asyncio.get_running_loop().create_task(self.consumer.shutdown())

    def force(self, signum: int) -> None:
        """Stop at once: cancel running handlers, their messages go back; exit 128 + signum."""
        if self.forced is not None:
            return
        self.forced = 128 + signum
        name = _signal_name(signum)
        self.stop_reason = self.stop_reason or name
        running = self.consumer.stats.in_flight if self.consumer is not None else 0
        log.warning(
            "%s: stopping at once; %d running handler(s) are cancelled and their messages "
            "given back",
            name,
            running,
        )
        if self._task is not None:
            self._task.cancel()

    def status(self) -> str:
        """`ready`, or `unready: why`: what /readyz and the supervisor are told."""
        if self.stop_reason is not None:
            return "unready: stopping"
        if self.consumer is not None and self.consumer.ready:
            return "ready"
        if not self.joined.is_set():
            return "unready: not yet joined to its group on the broker"
        return "unready: the broker did not answer the last read"

    def _routes(self) -> dict[str, Route]:
        render = self._render_metrics

        async def metrics() -> Response:
            if render is None:
                return Response.text(404, "metrics are not collected")
            body = await asyncio.to_thread(render)
            return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

        async def healthz() -> Response:
            if self._task is not None and self._task.done():
                return Response.text(503, "the consumer has ended")
            return Response.text(200, "ok")

        async def readyz() -> Response:
            said = self.status()
            return Response.text(200 if said == "ready" else 503, said)

        return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---- the command ------------------------------------------------------------------------------


def _keys(text: str) -> tuple[str, ...]:
    keys = split_keys(text)
    if not keys:
        raise argparse.ArgumentTypeError(f"{text!r} names no key; give K1,K2")
    return keys


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {text!r}")
    return value


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe run`."""
    parser = commands.add_parser(
        "run",
        help="run a worker: an async handler on every message, until SIGTERM",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run NAME from MODULE on every message of the keys, in a consumer group, on the\n"
            "backend QUEUE_BACKEND chooses, until SIGTERM or Ctrl-C. The current directory\n"
            "is importable.\n\n"
            "NAME is an async function taking the payload (`async def handle(payload)`),\n"
            "or a dict of key to such functions: each message then goes to its key's\n"
            "handler, and the keys default to the dict's, so one file says which key\n"
            "goes where and nothing else needs to.\n\n"
            "The first SIGTERM or SIGINT stops taking messages, lets running handlers\n"
            "finish and be acknowledged, and exits 0. A second cancels them at once and\n"
            "their messages go back to the broker: exit 130 (SIGINT) or 143 (SIGTERM)."
        ),
        epilog=(
            "Exit codes: 0 stopped when asked; 1 the broker or the run failed; 2 bad usage, "
            "a module or NAME that does not load, or bad settings; 130/143 stopped at once "
            "by a second signal."
        ),
    )
    parser.add_argument("target", metavar="MODULE:NAME", help="the handler, e.g. service:handle")
    parser.add_argument(
        "--group",
        metavar="G",
        help=f"the consumer group (default: ${GROUP_VARIABLE}, else {DEFAULT_GROUP!r})",
    )
    parser.add_argument(
        "--keys",
        type=_keys,
        metavar="K1,K2",
        help=f"the keys to read (default: a dict NAME's keys, else ${KEYS.name})",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="most handlers running at once in each worker process (default 1)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="P",
        help="worker processes under one supervisor that restarts a crashed one (default 1)",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=5,
        metavar="N",
        help="attempts before a failing message goes to its dead-letter key (default 5)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds running handlers get to finish after SIGTERM (default 30)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="the root logger's level (default info)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (0: a free one, logged); "
        "needs prometheus-client (pip install 'abe-core[metrics]')",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address to serve them on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    # A worker started by the supervisor: its end of the control socket, and whether to
    # record metrics for the supervisor to serve (prometheus-client's multiprocess mode).
    parser.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--record-metrics", action="store_true", help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run one worker here, or a supervisor of `--workers` worker processes."""
    metrics_wanted = args.metrics_port is not None or args.record_metrics
    if metrics_wanted and importlib.util.find_spec("prometheus_client") is None:
        raise CommandError(_METRICS_MISSING, EXIT_USAGE)
    level = logging.DEBUG if args.debug else logging.getLevelName(args.log_level.upper())
    if args.workers > 1 and args.control_fd is None:
        with _run_logging(level):
            return _supervise(args)
    target = load_target(args.target, args.keys)
    if target.keys is None and not split_keys(os.environ.get(KEYS.name, "")):
        raise CommandError(
            f"no keys to read: pass --keys K1,K2, set {KEYS.name}, or make NAME a dict of "
            f"key to handler",
            EXIT_USAGE,
        )
    metrics: ConsumerMetrics | None = None
    render: Callable[[], bytes] | None = None
    if metrics_wanted:
        from abe.cli import metrics as prometheus  # noqa: PLC0415  (optional dependency)

        metrics = prometheus.ConsumerMetrics.for_process()
        render = prometheus.exposition
    worker = Worker(
        target,
        group=args.group or os.environ.get(GROUP_VARIABLE) or None,
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
        shutdown_timeout=args.shutdown_timeout,
        metrics=metrics,
        render_metrics=render,
        http=(args.metrics_host, args.metrics_port) if args.metrics_port is not None else None,
        control_fd=args.control_fd,
    )
    with _run_logging(level):
        return asyncio.run(worker.run())


def _supervise(args: argparse.Namespace) -> int:
    """`--workers P`: P worker processes, and the metrics of all of them if asked."""
    directory = None
    if args.metrics_port is not None:
        directory = tempfile.mkdtemp(prefix="abe-run-metrics-")
    try:
        return asyncio.run(supervisor_for(args, directory).run())
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def supervisor_for(
    args: argparse.Namespace, metrics_directory: str | None, policy: RestartPolicy | None = None
) -> Supervisor:
    """The supervisor of `args.workers` workers of this command line.

    With a metrics directory, each worker records its metrics there (prometheus-client's
    multiprocess mode) and the supervisor serves their sum.
    """
    env = dict(os.environ)
    if metrics_directory is not None:
        from abe.cli import metrics as prometheus  # noqa: PLC0415  (optional dependency)

        env[prometheus.MULTIPROCESS_VARIABLE] = metrics_directory
    supervisor = Supervisor(
        lambda fd: worker_argv(args, fd),
        args.workers,
        shutdown_timeout=args.shutdown_timeout,
        env=env,
        http=(args.metrics_host, args.metrics_port) if args.metrics_port is not None else None,
        policy=policy,
    )
    if metrics_directory is not None:
        supervisor.metrics = prometheus.SupervisorMetrics(
            metrics_directory, supervisor.alive, lambda: supervisor.restarts
        )
    return supervisor


def worker_argv(args: argparse.Namespace, control_fd: int) -> list[str]:
    """The command line of one worker of the supervisor: this `abe run`, for one process."""
    argv = [
        sys.executable,
        "-m",
        "abe",
        "run",
        f"--concurrency={args.concurrency}",
        f"--max-attempts={args.max_attempts}",
        f"--shutdown-timeout={args.shutdown_timeout!r}",
        f"--log-level={args.log_level}",
        f"--control-fd={control_fd}",
    ]
    if args.group is not None:
        argv.append(f"--group={args.group}")
    if args.keys is not None:
        argv.append(f"--keys={','.join(args.keys)}")
    if args.metrics_port is not None:
        argv.append("--record-metrics")
    if args.debug:
        argv.append("--debug")
    return [*argv, "--", args.target]


@contextlib.contextmanager
def _run_logging(level: int) -> Iterator[None]:
    """Log lines with time, level, logger and pid on stderr, abe's and the application's.

    A root logger the application already set up keeps its handlers; `--log-level` sets
    its level either way. The `abe` command's own one-line handler is set aside meanwhile.
    """
    abe_logger = logging.getLogger("abe")
    root = logging.getLogger()
    saved = list(abe_logger.handlers), abe_logger.level, abe_logger.propagate, root.level
    for handler in saved[0]:
        abe_logger.removeHandler(handler)
    abe_logger.setLevel(logging.NOTSET)
    abe_logger.propagate = True
    added = None
    if not root.handlers:
        added = logging.StreamHandler(sys.stderr)
        added.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(added)
    root.setLevel(level)
    try:
        yield
    finally:
        if added is not None:
            root.removeHandler(added)
        root.setLevel(saved[3])
        abe_logger.propagate = saved[2]
        abe_logger.setLevel(saved[1])
        for handler in saved[0]:
            abe_logger.addHandler(handler)
