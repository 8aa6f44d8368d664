"""The `abe` command on NATS: `abe check`, `abe demo` and `abe bench` (raw nats-py beside
abe) succeed, and leave no stream of theirs on the server; `abe consume` leaves no consumer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe
from abe_mq_nats_testing import raw_client

from abe.testing import unique


async def _own_streams(url: str) -> list[str]:
    async with raw_client(url) as (_, js):
        streams = await js.streams_info()
    return [info.config.name for info in streams if info.config.name.startswith(OWN_KEY_PREFIXES)]


async def _consumers(url: str, stream: str) -> set[str]:
    async with raw_client(url) as (_, js):
        return {info.name for info in await js.consumers_info(stream)}


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (("check",), "OK: nats round trip"),
        (("demo", "--quiet"), "OK: all 39 good orders were packed"),
        (("bench", "--messages", "200"), "nats-py"),
    ],
)
def test_abe_command_cleans_up(nats_broker: Any, arguments: tuple[str, ...], said: str) -> None:
    # Only what the command made: the server is shared and may hold other runs' streams.
    before = set(asyncio.run(_own_streams(nats_broker.url)))
    output = run_abe("nats", nats_broker.env(), *arguments)
    assert said in output
    assert set(asyncio.run(_own_streams(nats_broker.url))) - before == set()


@pytest.mark.asyncio
async def test_abe_consume_deletes_its_group(nats_broker: Any, make_backend: Any) -> None:
    backend = make_backend()
    key, kept = unique("consumed"), unique("kept")
    await backend.publish_many(key, [{"number": number} for number in range(3)])
    async with backend.subscribe(group=kept, keys=[key]):  # a group of someone else's
        pass
    stream = backend._jetstream.streams[key].name
    before = await _consumers(nats_broker.url, stream)
    assert len(before) == 1

    arguments = ("consume", key, "--count", "3", "--timeout", "20")
    output = await asyncio.to_thread(run_abe, "nats", nats_broker.env(), *arguments)

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines == [{"number": number} for number in range(3)]
    assert await _consumers(nats_broker.url, stream) == before  # its own group went
    missing = unique("missing")
    output = await asyncio.to_thread(
        run_abe,
        "nats",
        nats_broker.env(),
        "consume",
        key,
        missing,
        "--count",
        "3",
        "--timeout",
        "5",
    )
    assert f"{missing} does not exist" in output
    assert await backend.existing_keys([missing]) == []  # abe consume created no stream
