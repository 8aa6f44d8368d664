"""`abe publish` and `abe consume`: bad input exits 2, messages print as JSON lines, acks flush."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import pytest

from abe import MemoryBackend, MemoryBroker
from abe.cli import main
from abe.cli.connect import LoadedBackend
from abe.cli.consume import consume


def test_publish_then_consume_prints_the_payload(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = {"id": 7, "name": "Zoë", "items": [1.5, None, True]}
    assert main(["publish", "orders", json.dumps(payload)]) == 0
    assert capsys.readouterr().out.strip() == "published to orders on memory"
    assert broker.messages("orders") == [payload]
    assert main(["consume", "orders", "--count", "1", "--group", "g"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == [payload]
    assert "abe consume: 1 message; stopped: --count 1 reached" in captured.err
    assert broker.pending("orders", "g") == 0  # acknowledged, and the ack was flushed


def test_consume_show_meta_gives_key_id_attempt_and_headers(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", "orders", '{"id": 1}', "--header", "trace-id=abc=1"]) == 0
    assert main(["consume", "orders", "--count", "1", "--show-meta"]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    shown = json.loads(line)
    assert set(shown) == {"key", "id", "attempt", "headers", "payload"}
    assert shown["key"] == "orders"
    assert shown["attempt"] == 1
    assert shown["payload"] == {"id": 1}
    assert shown["headers"]["trace-id"] == "abc=1"
    assert shown["headers"]["abe-id"] == shown["id"]


def test_the_same_group_resumes_after_what_was_acknowledged(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    for number in range(3):
        assert main(["publish", "orders", json.dumps({"n": number})]) == 0
    assert main(["consume", "orders", "--group", "g", "--count", "2"]) == 0
    assert main(["consume", "orders", "--group", "g", "--count", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in out[3:]] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_consume_count_not_reached_before_timeout_exits_1(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", "orders", '{"n": 1}']) == 0
    assert main(["consume", "orders", "--count", "3", "--timeout", "0.2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == ['{"n": 1}']
    assert "stopped: no message for 0.2 s" in captured.err
    assert "expected 3 messages, got 1" in captured.err


def test_consume_timeout_alone_ends_with_0(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("a", "b"):  # keys that exist, with nothing on them
        broker.join(key, "someone")
    assert main(["consume", "a", "b", "--timeout", "0.1"]) == 0
    assert "abe consume: 0 messages; stopped: no message for 0.1 s" in capsys.readouterr().err


def test_publish_reads_stdin_with_a_dash(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"from": "stdin"}\n'))
    assert main(["publish", "orders", "-"]) == 0
    assert broker.messages("orders") == [{"from": "stdin"}]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["publish", "orders", '{"id": 1,}'],
            # the reason's wording differs between Python versions; the frame does not
            "abe publish: the payload is not valid JSON: ",
        ),
        (
            ["publish", "orders", '{"id":\n 1\n'],
            "abe publish: the payload is not valid JSON: Expecting ',' delimiter at line 3, "
            "column 1",
        ),
        (
            ["publish", "orders", "[1, 2]"],
            "abe publish: the payload must be a JSON object ({...}), got an array",
        ),
        (["publish", "orders", '"text"'], "got a string"),
        (["publish", "orders", "null"], "got null"),
        (["publish", "orders", '{"x": NaN}'], "NaN is not part of JSON"),
        (["publish", "bad key", "{}"], "abe publish: key 'bad key' contains ' '"),
        (["publish", "orders", "{}", "--header", "novalue"], "is not NAME=VALUE"),
        (
            ["publish", "orders", "{}", "--header", "abe-id=1"],
            "header name 'abe-id' starts with 'abe-'",
        ),
        (["consume", "bad/key", "--count", "1"], "abe consume: key 'bad/key' contains '/'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("abe ")]
    assert len(errors) == 1
    assert message in errors[0]
    assert broker.messages("orders") == []


def test_an_unavailable_backend_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from abe import BackendUnavailableError, MemoryBackend

    async def unreachable(self: MemoryBackend, *args: object, **kwargs: object) -> None:
        raise BackendUnavailableError("memory: publish did not complete within 10s")

    monkeypatch.setattr(MemoryBackend, "publish", unreachable)
    assert main(["publish", "orders", "{}"]) == 1
    assert "abe publish: memory: publish did not complete within 10s" in capsys.readouterr().err


class _Lines(io.StringIO):
    """A stdout that says when it has received a number of lines."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.wanted = wanted
        self.enough = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.wanted:
            self.enough.set()
        return written


@pytest.mark.asyncio
async def test_sigint_stops_consume_cleanly_with_acks_flushed(
    broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from abe import MemoryBackend

    async with MemoryBackend.from_env() as producer:
        await producer.publish_many("orders", [{"n": 1}, {"n": 2}])
    stdout = _Lines(wanted=2)
    monkeypatch.setattr(sys, "stdout", stdout)
    running = asyncio.get_running_loop().create_task(
        consume(["orders"], group="g", count=None, timeout=None, show_meta=False)
    )
    await asyncio.wait_for(stdout.enough.wait(), 5)
    signal.raise_signal(signal.SIGINT)
    assert await asyncio.wait_for(running, 5) == 0
    assert stdout.getvalue().splitlines() == ['{"n": 1}', '{"n": 2}']
    assert "stopped: interrupted" in capsys.readouterr().err
    assert broker.pending("orders", "g") == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_PUBLISH_THEN_CONSUME = """
import asyncio, sys
from abe import load_backend
from abe.cli import main

async def publish():  # the memory broker lives in this process: give consume a key to read
    backend = load_backend()
    await backend.publish("orders", {"id": 1})

asyncio.run(publish())
sys.exit(main(["consume", "orders", "--timeout", "60"]))
"""


def test_sigterm_stops_abe_consume_without_traceback(memory_env: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _PUBLISH_THEN_CONSUME],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert process.stderr is not None
    try:
        seen = []
        for line in process.stderr:  # wait until it is reading
            seen.append(line)
            if "(Ctrl-C to stop)" in line:
                break
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, "".join(seen) + err
    assert json.loads(out) == {"id": 1}
    assert "abe consume: 1 message; stopped: terminated" in err
    assert "Traceback" not in "".join(seen) + err


def test_consume_speaks_of_one_message_in_the_singular(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.join("nothing-here", "someone")
    assert main(["consume", "nothing-here", "--count", "1", "--timeout", "0.1"]) == 1
    assert "expected 1 message, got 0" in capsys.readouterr().err


def test_consume_without_a_group_leaves_no_group_behind(
    broker: MemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["publish", "orders", '{"id": 1}']) == 0
    assert main(["consume", "orders", "--count", "1"]) == 0
    assert broker.groups("orders") == []
    assert main(["consume", "orders", "--count", "1", "--group", "kept"]) == 0
    assert broker.groups("orders") == ["kept"]  # a named group is the caller's to keep


class _KnowsItsKeys(MemoryBackend):
    """The memory backend with the optional `_existing_keys` hook, as remote brokers have."""

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        return [key for key in keys if self.broker.exists(key)]


def test_consume_never_creates_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = _KnowsItsKeys()
    monkeypatch.setattr("abe.cli.consume.load", lambda: LoadedBackend(backend, fallback=False))
    asyncio.run(backend.publish("orders", {"id": 1}))
    assert main(["consume", "orders", "typo", "--count", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"id": 1}
    assert "typo does not exist on memory; abe consume does not create keys" in captured.err
    assert backend.broker.keys() == ["orders"]
    assert backend.broker.groups("orders") == []
    backend = _KnowsItsKeys()
    monkeypatch.setattr("abe.cli.consume.load", lambda: LoadedBackend(backend, fallback=False))
    assert main(["consume", "typo", "other", "--timeout", "5"]) == 1
    assert "typo, other do not exist on memory" in capsys.readouterr().err
    assert backend.broker.keys() == []
