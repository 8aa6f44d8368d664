"""Redis Cluster mode and replica confirmation, offline: settings, detection, slot grouping,
the cluster client's options, and what a publish does with WAIT's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import NoPermissionError

from abe.errors import BackendUnavailableError, ConfigurationError
from abe.provider import OutgoingMessage
from abe_mq_redis import RedisBackend, RedisSettings
from abe_mq_redis._client import _RAW, Cluster, Command, RedisClient, connection_kwargs
from abe_mq_redis._receiver import RedisReceiver


def test_cluster_mode_is_auto_by_default_and_read_from_the_environment() -> None:
    assert RedisSettings().cluster == "auto"
    assert RedisSettings().wait_replicas == 0
    settings = RedisSettings.from_env({"ABE_REDIS_CLUSTER": "YES", "ABE_REDIS_WAIT_REPLICAS": "2"})
    assert (settings.cluster, settings.wait_replicas) == ("yes", 2)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ABE_REDIS_CLUSTER": "maybe"}, "ABE_REDIS_CLUSTER"),
        ({"ABE_REDIS_WAIT_REPLICAS": "-1"}, "ABE_REDIS_WAIT_REPLICAS"),
        ({"ABE_REDIS_CLUSTER": "yes", "REDIS_URL": "unix:///run/redis.sock"}, "ABE_REDIS_CLUSTER"),
        ({"ABE_REDIS_CLUSTER": "yes", "REDIS_URL": "redis://h:7000/2"}, "ABE_REDIS_CLUSTER"),
    ],
)
def test_cluster_settings_are_checked(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env(env)
    assert refused.value.variables == (variable,)


def test_auto_and_no_accept_any_url() -> None:
    RedisSettings(url="unix:///run/redis.sock", cluster="auto")
    RedisSettings(url="redis://h:7000/2", cluster="no")
    RedisSettings(url="rediss://h:7000/0?ssl_cert_reqs=none", cluster="yes")


class _Asked(RedisClient):
    """A client whose single-server round trips are answered from a list, recorded."""

    def __init__(self, settings: RedisSettings, answer: Any) -> None:
        super().__init__(settings)
        self.answer, self.sent = answer, []  # type: ignore[var-annotated]

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        self.sent.append(list(commands))
        return [self.answer for _ in commands]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "answer", "asked", "cluster"),
    [
        ("auto", b"# Cluster\r\ncluster_enabled:1\r\n", True, True),
        ("auto", b"# Cluster\r\ncluster_enabled:0\r\n", True, False),
        ("auto", NoPermissionError("no permissions to run the 'info' command"), True, False),
        ("yes", None, False, True),
        ("no", None, False, False),
    ],
)
async def test_cluster_detection(mode: str, answer: Any, asked: bool, cluster: bool) -> None:
    client = _Asked(RedisSettings(url="redis://127.0.0.1:7301/0", cluster=mode), answer)
    for _ in range(2):  # asked once at most
        assert (await client._cluster() is not None) is cluster
    assert client.sent == ([[("INFO", "cluster")]] if asked else [])
    await client.close()


@pytest.mark.asyncio
async def test_a_failed_question_is_asked_again() -> None:
    client = _Asked(RedisSettings(url="redis://127.0.0.1:7301/0"), ConnectionError("down"))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await client._cluster()
    assert len(client.sent) == 2


def test_the_cluster_client_has_the_servers_options_and_reads_replies_raw() -> None:
    settings = RedisSettings(url="rediss://alice@h:7301/0", password=None, tls_ca_file=None)
    cluster = Cluster(connection_kwargs(settings, 5.0), connection_kwargs(settings, 6.0))
    for client, timeout in ((cluster.commands, 5.0), (cluster.reads, 6.0)):
        node = client.get_default_node() or client.nodes_manager.startup_nodes["h:7301"]
        assert node.connection_kwargs["socket_timeout"] == timeout
        assert node.connection_kwargs["username"] == "alice"
        assert node.connection_kwargs["ssl_check_hostname"] is True
        assert "db" not in node.connection_kwargs or node.connection_kwargs["db"] == 0
        assert not any(name in client.response_callbacks for name in _RAW)
        assert "COMMAND" in client.response_callbacks  # what the cluster client reads itself


def _same_slot(key: str) -> str:
    """Another key (of abe's characters) in `key`'s hash slot."""
    return next(
        other
        for n in range(1_000_000)
        if key_slot((other := f"k{n}").encode()) == key_slot(key.encode()) and other != key
    )


class _Reads:
    """A cluster whose reads are recorded and answered with nothing."""

    def __init__(self) -> None:
        self.reads: list[Command] = []

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        return [1 for _ in commands]

    async def read(self, command: Command) -> Any:
        self.reads.append(command)
        await asyncio.sleep(0)
        return None


@pytest.mark.asyncio
async def test_a_subscription_reads_each_slot_with_one_xreadgroup_at_once() -> None:
    keys = ("orders", "refunds", _same_slot("orders"))
    backend = RedisBackend(RedisSettings(cluster="yes"))
    receiver = RedisReceiver(backend.client, "billing", keys, "host-1-1")
    reads = _Reads()
    backend.client.cluster = reads  # type: ignore[assignment]
    assert await receiver._cluster_read([], [], keys, 10, 250) == [None, None]
    streams = [command[command.index("STREAMS") + 1 :] for command in reads.reads]
    assert streams == [("orders", keys[2], ">", ">"), ("refunds", ">")]
    for command in reads.reads:
        assert command[:6] == ("XREADGROUP", "GROUP", "billing", "host-1-1", "COUNT", 10)
        assert command[6:8] == ("BLOCK", 250)
    backend.client.cluster = None
    await backend.close()


class _Confirming(RedisClient):
    """A client whose `send_to` stores every XADD and answers WAIT with `replicas`."""

    def __init__(self, settings: RedisSettings, replicas: Any) -> None:
        super().__init__(settings)
        self.replicas, self.sent = replicas, []  # type: ignore[var-annotated]

    async def send_to(self, key: str, commands: Sequence[Command]) -> list[Any]:
        self.sent.append((key, list(commands)))
        return [b"1-0" for _ in commands[:-1]] + [self.replicas]


def _backend(replicas: Any, wanted: int) -> tuple[RedisBackend, _Confirming]:
    settings = RedisSettings(wait_replicas=wanted, operation_timeout=4)
    backend = RedisBackend(settings)
    backend.client = _Confirming(settings, replicas)
    return backend, backend.client


@pytest.mark.asyncio
async def test_a_publish_waits_for_the_replicas_on_the_connection_of_its_xadds() -> None:
    backend, client = _backend(2, wanted=2)
    await backend._send("orders", [OutgoingMessage("m", b"{}", {"abe-id": "m"})] * 2)
    ((key, commands),) = client.sent
    assert key == "orders"
    assert [command[0] for command in commands] == ["XADD", "XADD", "WAIT"]
    assert commands[-1] == ("WAIT", 2, 2000)  # half the operation timeout, in ms


@pytest.mark.asyncio
@pytest.mark.parametrize("replicas", [0, 1, NoPermissionError("no WAIT for you")])
async def test_too_few_replicas_is_an_error_that_says_what_a_retry_risks(replicas: Any) -> None:
    backend, _ = _backend(replicas, wanted=2)
    with pytest.raises(BackendUnavailableError) as refused:
        await backend._send("orders", [OutgoingMessage("m", b"{}", {"abe-id": "m"})])
    text = str(refused.value)
    assert "stored on the Redis primary" in text
    assert "2 replicas ABE_REDIS_WAIT_REPLICAS asks for" in text
    assert "may still be delivered" in text
    assert "message_id" in text


@pytest.mark.asyncio
async def test_without_wait_replicas_no_wait_is_sent() -> None:
    backend, client = _backend(0, wanted=0)
    sent: list[Sequence[Command]] = []

    async def send(commands: Sequence[Command], *args: Any) -> list[Any]:
        sent.append(commands)
        return [b"1-0" for _ in commands]

    client.send = send  # type: ignore[method-assign]
    await backend._send("orders", [OutgoingMessage("m", b"{}", {"abe-id": "m"})])
    assert client.sent == []
    assert [command[0] for command in sent[0]] == ["XADD"]


@pytest.mark.parametrize("option", ["ssl_ca_path=/etc/ssl", "retry_on_timeout=1"])
def test_a_url_option_the_cluster_client_lacks_is_named(option: str) -> None:
    settings = RedisSettings(url=f"rediss://h:7301/0?{option}")
    with pytest.raises(ConfigurationError) as refused:
        Cluster(connection_kwargs(settings, 5.0), connection_kwargs(settings, 6.0))
    assert refused.value.variables == ("REDIS_URL",)
    assert option.partition("=")[0] in str(refused.value)
