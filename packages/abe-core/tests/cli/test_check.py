"""`abe check`: a verdict on one round trip, bounded in time, with a hint when it fails."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest

from abe import BackendUnavailableError, MemoryBackend, MemoryBroker
from abe.backends.message_queue.base import IncomingMessage, Receiver
from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.memory import MemorySettings
from abe.cli import main
from abe.cli.connect import LoadedBackend
from abe.provider import BaseBackend


def test_ok_on_the_memory_backend(broker: MemoryBroker, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(
        r"OK: memory round trip in \d+\.\d ms \(<MemoryBackend broker='.+' open>\)", out
    )
    assert broker.keys() == []  # the probe's key was deleted


def test_the_probe_is_acknowledged_before_its_key_is_deleted(
    deleted: dict[str, Any],
) -> None:
    assert main(["check"]) == 0
    key, letters = deleted
    assert key.startswith("abe-check-")
    assert letters == f"{key}-dlq"
    assert deleted[key].pending == {key: 0}  # read back in group abe-check-<hex>, acknowledged


def test_a_configuration_problem_is_bad_input_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ABE_MQ_PREFETCH", "lots")
    assert main(["check"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("abe check: the memory backend is not configured correctly")
    assert "ABE_MQ_PREFETCH: must be a whole number" in line


def test_an_unknown_backend_is_bad_input_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUEUE_BACKEND", "kafka")
    assert main(["check"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("abe check: no message-queue backend named 'kafka'")
    assert "pip install abe-mq-kafka" in line


class _Silent(MemoryBackend):
    """A broker that never answers a publish."""

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        await asyncio.Event().wait()


def test_a_broker_that_does_not_answer_fails_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = _Silent(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(silent, fallback=False))
    assert main(["check", "--timeout", "0.2"]) == 1
    first, hint = capsys.readouterr().out.strip().splitlines()
    assert first == "FAILED: publishing the probe — no answer within 0.2 s"
    assert "raise --timeout" in hint
    assert silent.closed


class _SilentEverywhere(_Silent):
    """A broker that never answers anything: publish, delete or close."""

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        await asyncio.Event().wait()

    async def _close(self) -> None:
        await asyncio.Event().wait()


def test_the_whole_check_clean_up_included_keeps_its_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = _SilentEverywhere(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(silent, fallback=False))
    started = time.monotonic()
    assert main(["check", "--timeout", "1"]) == 1
    assert time.monotonic() - started < 1.5, "the check outlived its --timeout"
    err = capsys.readouterr().err
    assert "did not finish within" in err  # said in words, not "(TimeoutError: )"
    assert "TimeoutError: )" not in err


class _Refusing(MemoryBackend):
    """A broker that refuses the connection at once."""

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        raise BackendUnavailableError("connection refused")


def test_nothing_is_cleaned_up_when_nothing_was_published(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _Refusing(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(backend, fallback=False))
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("FAILED: publishing the probe — connection refused")
    assert "deleting" not in captured.err


class _AckRefused(MemoryBackend):
    """A broker that delivers but refuses every acknowledgement."""

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        inner = await super()._open_receiver(group, keys)

        class Refusing(Receiver):
            async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
                return await inner.fetch(max_messages, timeout)

            async def ack(self, messages: Sequence[IncomingMessage]) -> None:
                raise BackendUnavailableError("the broker went away")

            async def nack(self, message: IncomingMessage, delay: float) -> None:
                await inner.nack(message, delay)

        return Refusing()


def test_a_refused_acknowledgement_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _AckRefused(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(backend, fallback=False))
    assert main(["check"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FAILED: acknowledging the probe — acknowledging 1 message(s) failed")
    assert "the broker went away" in first


class _CannotDelete(MemoryBackend):
    """A provider that did not write the optional `_delete_keys` hook."""

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        await BaseBackend._delete_keys(self, keys)


def test_a_backend_that_cannot_delete_keys_passes_and_says_what_it_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _CannotDelete(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(backend, fallback=False))
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: memory round trip")
    (key,) = backend.broker.keys()
    assert captured.err == (f"left on the broker (the memory backend cannot delete keys): {key}\n")


class _DeleteFails(MemoryBackend):
    async def _delete_keys(self, keys: Sequence[str]) -> None:
        raise BackendUnavailableError("the broker went away")


def test_a_failed_clean_up_is_a_warning_not_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _DeleteFails(MemorySettings())
    monkeypatch.setattr("abe.cli.check.load", lambda: LoadedBackend(backend, fallback=False))
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: memory round trip")
    assert re.fullmatch(
        r"abe: warning: deleting this run's keys \(abe-check-[0-9a-f]{12}\) failed "
        r"\(BackendUnavailableError: the broker went away\)\n",
        captured.err,
    )
