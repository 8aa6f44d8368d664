"""A progress display for long runs: one updating line on a terminal, periodic lines elsewhere.

It writes to stderr so that stdout keeps only the command's result. Updates are
throttled, so calling it once per message costs a clock read and a comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressLine"]

_TTY_INTERVAL = 0.1
_PLAIN_INTERVAL = 2.0


class ProgressLine:
    """Shows `label: done/total` for one task; call it with the count done, then `finish()`.

    With `stream=None` it shows nothing. On a terminal the line is rewritten in place
    (with `\\r`); otherwise a line is written at most every two seconds.
    """

    def __init__(
        self,
        stream: TextIO | None,
        label: str,
        total: int,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._label = label
        self._total = max(total, 1)
        self._tty = stream is not None and stream.isatty()
        self._interval = _TTY_INTERVAL if self._tty else _PLAIN_INTERVAL
        self._next = clock() + self._interval
        self._width = 0

    def __call__(self, done: int) -> None:
        if self._stream is None:
            return
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        self._show(f"{self._label}: {done:,}/{self._total:,} ({100 * done // self._total}%)")

    def finish(self, summary: str) -> None:
        """Replace the line with `label: summary` and end it."""
        if self._stream is None:
            return
        self._show(f"{self._label}: {summary}", final=True)

    def _show(self, text: str, *, final: bool = False) -> None:
        assert self._stream is not None
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._width = 0 if final else len(text)
            self._stream.write(f"\r{text}{padding}{chr(10) if final else ''}")
        else:
            self._stream.write(f"{text}\n")
        self._stream.flush()
