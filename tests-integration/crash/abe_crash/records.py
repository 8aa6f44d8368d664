"""The files a crash run leaves behind: one line per confirmed publish, one per handled message.

Writers append each whole line with a single ``os.write`` on an ``O_APPEND`` descriptor,
so nothing waits in a Python buffer when a process is killed; readers skip a last line
that has no newline yet. Times are ``time.monotonic()``, one clock for every process on
the machine (Linux ``CLOCK_MONOTONIC``), so the conductor can order events across them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Confirmed",
    "Handled",
    "LineWriter",
    "Tail",
    "message_id",
    "read_confirmed",
    "read_handled",
]


def message_id(number: int) -> str:
    """The id the producer gives message `number` on every attempt to publish it."""
    return f"m-{number}"


@dataclass(frozen=True)
class Confirmed:
    """Message `number` was published: the first try began at `started`, and `publish()`
    returned, after `attempts` tries, at `at`."""

    number: int
    attempts: int
    at: float
    started: float

    def line(self) -> str:
        """The line the producer appends."""
        return f"{self.number} {self.attempts} {self.at:.6f} {self.started:.6f}\n"

    @classmethod
    def parse(cls, line: str) -> Confirmed:
        """The record of one line written by :meth:`line`."""
        number, attempts, at, started = line.split()
        return cls(int(number), int(attempts), float(at), float(started))


@dataclass(frozen=True)
class Handled:
    """Worker `pid` ran the handler of message `number` (delivery `attempt`) to its end at `at`."""

    number: int
    pid: int
    attempt: int
    at: float

    def line(self) -> str:
        """The line a worker appends before its handler returns (so before the ack)."""
        return f"{self.number} {self.pid} {self.attempt} {self.at:.6f}\n"

    @classmethod
    def parse(cls, line: str) -> Handled:
        """The record of one line written by :meth:`line`."""
        number, pid, attempt, at = line.split()
        return cls(int(number), int(pid), int(attempt), float(at))


class LineWriter:
    """Appends lines to a file, each with one unbuffered write (safe under SIGKILL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        """Append `line` (which ends in a newline) now."""
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


class Tail:
    """Follows a file another process appends to: each call returns the lines completed since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_lines(self) -> list[str]:
        """Whole lines appended since the last call (none if the file does not exist yet)."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._offset += end
        return data[:end].decode().splitlines()


def read_confirmed(path: Path) -> list[Confirmed]:
    """Every whole line of a producer's file."""
    return [Confirmed.parse(line) for line in Tail(path).new_lines()]


def read_handled(path: Path) -> list[Handled]:
    """Every whole line of a worker's file."""
    return [Handled.parse(line) for line in Tail(path).new_lines()]
