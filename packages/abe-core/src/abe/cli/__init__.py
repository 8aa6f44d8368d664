"""The `abe` command: inspect, check, publish to, consume from and benchmark the configured backend.

    abe backends     installed backends, their variables, and which one loads
    abe check        a round trip through the configured backend, with a verdict
    abe publish      publish one JSON payload
    abe consume      print messages as JSON lines
    abe demo         a producer, three workers and a dead letter, on the configured backend
    abe bench        throughput and latency of the configured backend
    abe new-provider a provider package for another broker, from abe's template
    abe run          a worker service: an async handler on every message, until SIGTERM

Exit codes: 0 success, 1 broker or runtime failure, 2 bad usage or bad input; `abe run`
stopped at once by a second signal exits 128 + signal (130, 143). Errors are one line on
stderr; `--debug` adds the traceback and abe's debug log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence

from abe._version import __version__
from abe.cli import backends as backends
from abe.cli import bench as bench
from abe.cli import check as check
from abe.cli import consume as consume
from abe.cli import demo as demo
from abe.cli import new_provider as new_provider
from abe.cli import publish as publish
from abe.cli import run as run
from abe.cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, exit_code_for, one_line

__all__ = ["build_parser", "main"]

_COMMANDS = (backends, check, publish, consume, demo, bench, new_provider, run)
_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `abe` and all its commands."""
    parser = argparse.ArgumentParser(
        prog="abe",
        description="abe: one message-queue protocol for asyncio services. "
        "The backend comes from QUEUE_BACKEND and the backend's own variables.",
        epilog="Exit codes: 0 success, 1 broker or runtime failure, 2 bad usage or input.",
    )
    parser.add_argument("--version", action="version", version=f"abe-core {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and abe's debug log on stderr"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        subparser = command.add_parser(commands)
        subparser.set_defaults(run=command.run)
        # --debug is accepted after the command too; SUPPRESS keeps the main parser's value
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `abe` with `argv` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        if exit_.code is None:
            return EXIT_OK
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    with _logging(debug=args.debug):
        try:
            return int(args.run(args))
        except KeyboardInterrupt:
            print(f"abe {args.command}: interrupted", file=sys.stderr)
            return _INTERRUPTED
        except BrokenPipeError:  # stdout closed early, as by `abe consume ... | head -1`
            _silence_stdout()
            return EXIT_FAILURE
        except Exception as exc:
            if args.debug:
                traceback.print_exc()
            print(f"abe {args.command}: {one_line(exc)}", file=sys.stderr, flush=True)
            return exit_code_for(exc)


def _silence_stdout() -> None:
    """Send what is left for stdout to /dev/null, so exiting does not fail on the closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class _OneLine(logging.Formatter):
    """`abe: warning: message`, with the traceback only in debug mode."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self._debug = debug

    def format(self, record: logging.LogRecord) -> str:
        text = f"abe: {record.levelname.lower()}: {record.getMessage()}"
        if self._debug and record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def _logging(*, debug: bool) -> Iterator[None]:
    """abe's log records on stderr, one line each, for the length of one command."""
    logger = logging.getLogger("abe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(debug))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
