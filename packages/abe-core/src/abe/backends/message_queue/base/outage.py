"""An outage said twice, not a thousand times: when the broker goes away, and when it is back.

Client libraries log every failed reconnect attempt (aiokafka writes an ERROR line many
times a second while a broker is down). `OutageLog` is a logging filter on the client's
loggers: the first warning or error a client logs, or the first BackendUnavailableError
abe sees, starts an outage, which abe reports once on `abe.outage`; until the broker
answers again, the client's warnings and errors are demoted to DEBUG (still there for
whoever asks for DEBUG, out of everyone else's logs); the first success ends the outage
with one line saying how long it lasted and how many client lines were held back.

Some client warnings report the group's routine rather than a broker away (aiokafka warns
on every rebalance, so at every deploy): a backend names their format strings, and those
lines are shown at INFO and start no outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["OutageLog"]

log = logging.getLogger("abe.outage")


class OutageLog(logging.Filter):
    """Tracks one backend's outages and keeps its client library's logs to two lines each."""

    def __init__(
        self,
        backend: str,
        where: Callable[[], str],
        scrub: Callable[[str], str],
        routine: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self._backend = backend
        self._routine = routine
        self._where = where
        self._scrub = scrub
        self._since: float | None = None
        self._held = 0
        self._loggers: list[logging.Logger] = []

    @property
    def down(self) -> bool:
        """Whether an outage is going on (only tracked while watching a client's loggers)."""
        return self._since is not None

    def failed(self, reason: str) -> None:
        """abe saw the broker fail a call: start an outage if none is going on."""
        if self._since is None and self._loggers:
            self._since = time.monotonic()
            self._held = 0
            where = self._where()
            log.warning(
                "%s: the broker%s is not answering (%s); abe says when it answers again, and "
                "holds the client library's errors back to DEBUG meanwhile",
                self._backend,
                f" at {where}" if where else "",
                self._scrub(reason),
            )

    def recovered(self) -> None:
        """A call succeeded: end the outage, if one was going on."""
        if self._since is None:
            return
        lasted = time.monotonic() - self._since
        self._since = None
        log.warning(
            "%s: the broker answers again after %.1f s (%d client log line(s) held back to DEBUG)",
            self._backend,
            lasted,
            self._held,
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name.split(".")[0] == "abe":
            return True  # abe's own lines (a provider may watch its logger too) stay as they are
        if type(record.msg) is str and record.msg in self._routine:  # a rebalance, say
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        if self._since is None:
            self.failed(record.getMessage())
        self._held += 1
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    def install(self, *prefixes: str) -> None:
        """Watch every logger that exists under `prefixes` (idempotent)."""
        names = set(prefixes) | {
            name
            for name in list(logging.Logger.manager.loggerDict)
            if any(name.startswith(f"{prefix}.") for prefix in prefixes)
        }
        for name in sorted(names):
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                self._loggers.append(logger)

    def uninstall(self) -> None:
        """Stop watching the client's loggers."""
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()
