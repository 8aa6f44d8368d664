"""Contract 16, 19, 22, 23 for brokers in another process: down, restarted, refusing secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator

import pytest

from abe.backends.message_queue.base.backend import BaseBackend
from abe.errors import AbeError, BackendUnavailableError, PayloadError
from abe.testing.fixtures import (
    BackendFactory,
    Backends,
    ContractFixtures,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)
from abe.testing.helpers import WAIT, unique
from abe.testing.inputs import bad_payloads
from abe.testing.proxy import RecordingProxy

__all__ = ["RemoteBrokerContract"]


@contextlib.contextmanager
def _every_log_record() -> Iterator[list[logging.LogRecord]]:
    """Every record any logger makes meanwhile, with every logger (client libraries too) at DEBUG.

    Records are kept formatted, tracebacks included, as a handler would print them.
    """
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)  # fills exc_text, as a real handler would
            records.append(record)

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if logger is loggers[0] or not logger.propagate:
            logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled
            logger.removeHandler(handler)


@pytest.mark.asyncio
class RemoteBrokerContract(ContractFixtures):
    """What only a broker reached over a network can show: outages, restarts, credentials."""

    async def test_bad_payloads_are_refused_before_io(
        self, unreachable_backend_factory: BackendFactory
    ) -> None:
        backend = unreachable_backend_factory()
        try:
            started = time.monotonic()
            for _, payload in bad_payloads(backend.max_payload_bytes):
                with pytest.raises(PayloadError):
                    await backend.publish(unique("payloads"), payload)
            assert time.monotonic() - started < 2.0, "payload checks waited for the network"
        finally:
            await backend.close()

    async def test_no_secret_leaks(
        self,
        backends: Backends,
        secret_environment: SecretCase,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        backend_class = type(backends.new())
        secret = secret_environment.secret
        for variable in backend_class.variables:
            monkeypatch.delenv(variable.name, raising=False)
        for name, value in secret_environment.env.items():
            monkeypatch.setenv(name, value)
        caplog.set_level(logging.DEBUG)
        backend = backend_class.from_env()
        assert isinstance(backend, type(backends.new()))
        try:
            assert secret not in repr(backend)
            assert secret not in repr(getattr(backend, "settings", ""))
            with pytest.raises(AbeError) as failed:
                await backend.publish(unique("secret"), {"x": 1})
        finally:
            await backend.close()
        error: BaseException | None = failed.value
        while error is not None:
            assert secret not in str(error), f"{type(error).__name__} shows the secret"
            assert secret not in repr(error), f"{type(error).__name__} shows the secret"
            error = error.__cause__ or error.__context__
        for record in caplog.records:
            assert secret not in record.getMessage(), f"log record from {record.name}"
            assert secret not in (record.exc_text or "")

    async def test_no_secret_in_any_log(
        self, backends: Backends, secret_environment: SecretCase, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        backend_class = type(backends.new())
        secret = secret_environment.secret
        for variable in backend_class.variables:
            monkeypatch.delenv(variable.name, raising=False)
        for name, value in secret_environment.env.items():
            monkeypatch.setenv(name, value)
        with _every_log_record() as records:
            backend = backend_class.from_env()
            texts = [repr(backend), repr(backend.settings), str(backend.settings.describe())]
            try:
                with pytest.raises(AbeError) as failed:
                    await backend.publish(unique("secret"), {"x": 1})
                subscription = backend.subscribe(group=unique("group"), keys=[unique("secret")])
                with contextlib.suppress(AbeError, asyncio.TimeoutError):
                    await asyncio.wait_for(subscription.__anext__(), 3.0)
                await subscription.aclose()
            finally:
                await backend.close()
        error: BaseException | None = failed.value
        while error is not None:
            texts += [str(error), repr(error), *traceback.format_exception_only(type(error), error)]
            error = error.__cause__ or error.__context__
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        texts += [formatter.format(record) for record in records]
        assert records, "no log record was made at DEBUG: is logging of the client reached?"
        for text in texts:
            assert secret not in text, f"the secret appears in: {text[:300]}"

    async def test_tls_before_credentials(self, tls_mismatch: TlsMismatch) -> None:
        host, port = tls_mismatch.broker
        async with RecordingProxy(host, port) as proxy:
            backend = tls_mismatch.backend_at("127.0.0.1", proxy.port)
            try:
                assert tls_mismatch.secret not in repr(backend)
                with pytest.raises(BackendUnavailableError) as refused:
                    await asyncio.wait_for(backend.publish(unique("tls"), {"x": 1}), WAIT)
            finally:
                await backend.close()
        assert proxy.connections > 0, "the backend never reached the broker: nothing was tested"
        assert tls_mismatch.secret.encode() not in proxy.sent, (
            "a credential was sent before TLS was in place"
        )
        assert "TLS" in str(refused.value) or "SSL" in str(refused.value), str(refused.value)
        assert tls_mismatch.secret not in str(refused.value)

    async def test_broker_restart(self, restartable_broker: RestartableBroker) -> None:
        backend = restartable_broker.backend_factory()
        traffic = _Traffic(backend, unique("restart"))
        tasks = traffic.start(unique("group"))
        try:
            await traffic.until(lambda: len(traffic.consumed) >= 20, "no progress before restart")
            before = len(traffic.consumed)
            await restartable_broker.restart()
            traffic.restarted.set()
            await traffic.until(
                lambda: len(traffic.consumed) >= before + 20, "no progress after the restart"
            )
            await traffic.until(tasks[0].done, "publishing did not resume after the restart")
            if backend.capabilities.persistence:
                await traffic.until(
                    lambda: set(traffic.published) <= traffic.consumed,
                    "acknowledged publishes were lost",
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await backend.close()

    async def test_unreachable_broker(self, unreachable_backend_factory: BackendFactory) -> None:
        backend = unreachable_backend_factory()
        limit = backend.settings.operation_timeout + 5.0
        try:
            attempts: dict[str, Callable[[], Awaitable[None]]] = {
                "publish": lambda: backend.publish(unique("down"), {"x": 1}),
                "publish_many": lambda: backend.publish_many(unique("down"), [{"x": 1}, {"x": 2}]),
            }
            for what, attempt in attempts.items():
                started = time.monotonic()
                with pytest.raises(BackendUnavailableError):
                    await asyncio.wait_for(attempt(), 2 * limit)
                elapsed = time.monotonic() - started
                assert elapsed <= limit, (
                    f"{what} took {elapsed:.1f}s to give up (limit {limit:.1f}s)"
                )
        finally:
            await asyncio.wait_for(backend.close(), WAIT)


class _Traffic:
    """Numbered messages published and consumed on one key across a broker restart."""

    def __init__(self, backend: BaseBackend, key: str) -> None:
        self.backend, self.key = backend, key
        self.published: list[int] = []
        self.consumed: set[int] = set()
        self.progress = asyncio.Event()
        self.restarted = asyncio.Event()
        self.tasks: list[asyncio.Future[None]] = []

    def start(self, group: str) -> list[asyncio.Future[None]]:
        """The publisher and the consumer, running."""
        self.tasks = [
            asyncio.ensure_future(self.publish()),
            asyncio.ensure_future(self.consume(group)),
        ]
        return self.tasks

    async def publish(self) -> None:
        """50 messages, then (once restarted) 30 more; retried while the broker is down."""
        after_restart = 0
        while after_restart < 30:
            if len(self.published) >= 50 and not self.restarted.is_set():
                await self.restarted.wait()
            try:
                await self.backend.publish(self.key, {"number": len(self.published)})
            except BackendUnavailableError:
                await asyncio.sleep(0.2)  # the broker is down: retry, as an application would
                continue
            self.published.append(len(self.published))
            after_restart += self.restarted.is_set()
            self.progress.set()

    async def consume(self, group: str) -> None:
        async for payload in self.backend.consume(group=group, keys=[self.key]):
            self.consumed.add(payload["number"])
            self.progress.set()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait for `condition`, failing with `what` and the counts after 3 * WAIT."""
        deadline = asyncio.get_running_loop().time() + 3 * WAIT
        while not condition():
            for task in self.tasks:
                if task.done():
                    task.result()  # a publisher or consumer that died says why
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, (
                f"{what}: published {len(self.published)}, consumed {len(self.consumed)}, "
                f"missing {sorted(set(self.published) - self.consumed)[:20]}"
            )
            self.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.progress.wait(), min(remaining, 1.0))
