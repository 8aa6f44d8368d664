"""The `abe` command on NATS: `abe check`, `abe demo` and `abe bench` (raw nats-py beside
abe) succeed, and leave no stream of theirs on the server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe
from abe_mq_nats_testing import raw_client


async def _own_streams(url: str) -> list[str]:
    async with raw_client(url) as (_, js):
        streams = await js.streams_info()
    return [info.config.name for info in streams if info.config.name.startswith(OWN_KEY_PREFIXES)]


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
