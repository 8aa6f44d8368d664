"""`abe demo`: the orders stream, retries, one dead letter, the summary and the verdict."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import pytest

from abe import MemoryBackend, MemoryBroker, MemoryFallbackWarning
from abe.cli import demo as demo_module
from abe.cli import main
from abe.cli.demo import make_orders, problem_with
from abe.types import MessageQueueBackendProtocol


def _summary(out: str) -> dict[str, str]:
    """The summary rows, by their first word(s)."""
    rows = {}
    for line in out.split("\nSummary\n", 1)[1].splitlines():
        match = re.match(r"  (\S+(?: \S+)?)\s{2,}(.*)", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_demo_processes_every_good_order_and_dead_letters_the_poisoned_one(
    broker: MemoryBroker, deleted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    summary = _summary(out)
    assert summary["published"] == "40 orders (1 poisoned: order 1014)"
    processed = re.fullmatch(
        r"(\d+) \(worker-1: (\d+), worker-2: (\d+), worker-3: (\d+)\)", summary["processed"]
    )
    assert processed is not None
    total, *per_worker = (int(number) for number in processed.groups())
    assert total == 39
    assert sum(per_worker) == 39
    assert summary["retries"] == "2"
    assert summary["dead-lettered"] == "1 (order 1014)"
    assert re.fullmatch(
        r"\d+\.\d\d s, from the first publish .* not a throughput.*", summary["duration"]
    )
    assert "messages/s" not in summary["duration"]
    assert out.rstrip().splitlines()[-1] == (
        "OK: all 39 good orders were packed and only the poisoned order 1014 was "
        "dead-lettered, after 3 attempts"
    )
    # the events, as they happened
    assert "order 1014 failed on attempt 1/3 (item" in out
    assert re.search(r"order 1014 failed on attempt 2/3 \(.*\); retrying in 0\.[34]\d s", out)
    assert "order 1014 failed on attempt 3/3" in out
    letter = next(line for line in out.splitlines() if " dlq " in line)
    assert "abe-error='InvalidOrder: order 1014: item " in letter
    assert "abe-attempts='3'" in letter
    assert re.search(r"abe-original-key='abe-demo-orders-[0-9a-f]{8}'", letter)
    assert len(re.findall(r"worker-\d\s+packed order \d+", out)) == 39
    # on the broker, until the end: the per-run key and its dead letter; then nothing
    key, letters = deleted
    assert re.fullmatch(r"abe-demo-orders-[0-9a-f]{8}", key)
    assert letters == f"{key}-dlq"
    assert deleted[key].pending == {"fulfilment": 0}
    assert [letter["order_id"] for letter in deleted[letters].messages] == [1014]
    assert deleted[letters].pending == {"abe-demo-dlq": 0}
    assert broker.keys() == []


def test_quiet_demo_prints_only_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quiet", "--orders", "6"]) == 0
    out = capsys.readouterr().out
    assert "packed order" not in out
    summary = _summary(out)
    assert summary["published"] == "6 orders (1 poisoned: order 1003)"
    assert summary["processed"].startswith("5 (")
    assert summary["dead-lettered"] == "1 (order 1003)"
    assert out.rstrip().splitlines()[-1].startswith("OK: all 5 good orders were packed")


def test_demo_fails_when_a_good_order_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def also_refuse_1002(order: Mapping[str, Any]) -> str | None:
        return "refused" if order["order_id"] == 1002 else problem_with(order)

    monkeypatch.setattr(demo_module, "problem_with", also_refuse_1002)
    assert main(["demo", "--quiet", "--orders", "6"]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last == (
        "FAILED: 1 good order(s) not packed: order 1002; dead-lettered: orders 1002, 1003, "
        "expected only order 1003"
    )


def test_without_a_provider_the_fallback_is_said_in_words(
    memory_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fallback() -> MessageQueueBackendProtocol:
        warnings.warn("no provider is installed", MemoryFallbackWarning, stacklevel=2)
        return MemoryBackend.from_env()

    monkeypatch.delenv("QUEUE_BACKEND")
    monkeypatch.setattr("abe.cli.connect.load_backend", fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not escape
        assert main(["demo", "--quiet", "--orders", "4"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "backend: memory (embedded default; set QUEUE_BACKEND to use a broker)"
    )


def test_the_orders_are_realistic_and_exactly_one_is_poisoned() -> None:
    orders, poisoned = make_orders(40)
    assert [order["order_id"] for order in orders] == list(range(1001, 1041))
    assert [order["order_id"] for order in orders if problem_with(order)] == [poisoned]
    for order in orders:
        assert order["customer"]
        assert 1 <= len(order["items"]) <= 4
        expected = sum(item["qty"] * item["price"] for item in order["items"])
        assert order["total"] == pytest.approx(expected, abs=0.005)
    assert make_orders(40) == (orders, poisoned)  # the same on every run
