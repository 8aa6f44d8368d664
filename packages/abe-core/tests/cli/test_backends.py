"""`abe backends`: the installed list, each backend's variables, what loads, and no secrets."""

from __future__ import annotations

from typing import ClassVar

import pytest

import abe
from abe import MemoryBackend
from abe.backends.message_queue.loader import BackendEntry
from abe.backends.message_queue.memory import MemorySettings
from abe.cli import main
from abe.cli.backends import choose, describe_backends
from abe.errors import BackendNotFoundError
from abe.settings import Environment, Variable
from abe.types import MessageQueueBackendProtocol

TOKEN = Variable("FAKE_TOKEN", None, "The token the broker wants.", secret=True)
URL = Variable("FAKE_URL", "fake://localhost", "Where the broker is.")
RETRIES = Variable("FAKE_RETRIES", "3", "How often to retry.")


class FakeBackend(MemoryBackend):
    """A backend with a secret variable, built like a provider's: every variable checked."""

    name: ClassVar[str] = "fake"
    variables: ClassVar[tuple[Variable, ...]] = (TOKEN, URL, RETRIES)

    @classmethod
    def from_env(cls) -> FakeBackend:
        env = Environment()
        token = env.secret(TOKEN)
        env.url(URL, schemes=["fake"])
        env.integer(RETRIES, minimum=0)
        if token is not None and len(token.reveal()) < 8:  # a careless provider's message
            env.problem(TOKEN, f"is too short: {token.reveal()!r}")
        env.check(cls.name)
        return cls(MemorySettings())


ENTRY = BackendEntry("fake", "somewhere:FakeBackend", "abe-mq-fake", "1.2.3")
MEMORY = BackendEntry(
    "memory", "abe.backends.message_queue.memory:MemoryBackend", "abe-core", abe.__version__
)


def load_fake(entry: BackendEntry) -> type[MessageQueueBackendProtocol]:
    if entry.name == "fake":
        return FakeBackend
    return entry.load_class()


def test_lists_the_memory_backend_with_its_distribution_and_variables(
    memory_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert f"memory  abe-core {abe.__version__}" in out
    assert "load_backend() builds: memory (chosen by QUEUE_BACKEND=memory)" in out
    broker_row = next(line for line in out.splitlines() if "ABE_MEMORY_BROKER" in line)
    assert broker_row.split()[:3] == ["ABE_MEMORY_BROKER", "set", memory_env]
    prefetch_row = next(line for line in out.splitlines() if "ABE_MQ_PREFETCH" in line)
    assert prefetch_row.split()[:4] == ["ABE_MQ_PREFETCH", "unset", "-", "100"]
    assert "from_env(): OK, builds <MemoryBackend" in out


@pytest.mark.asyncio
async def test_a_secret_value_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TOKEN", "s3cr3t-t0ken-value")
    monkeypatch.setenv("FAKE_URL", "fake://admin:hunter2-password@broker:4222")
    environ = {
        "FAKE_TOKEN": "s3cr3t-t0ken-value",
        "FAKE_URL": "fake://admin:hunter2-password@broker:4222",
    }
    text = "\n".join(await describe_backends([ENTRY], environ=environ, load=load_fake))
    assert "s3cr3t-t0ken-value" not in text
    assert "hunter2-password" not in text
    token_row = next(line for line in text.splitlines() if "FAKE_TOKEN" in line)
    assert token_row.split()[:2] == ["FAKE_TOKEN", "set"]
    assert "(secret, not shown)" in token_row
    assert "fake://***@broker:4222" in text
    assert "from_env(): OK" in text


@pytest.mark.asyncio
async def test_a_secret_url_shows_where_it_points_and_hides_only_its_credentials() -> None:
    servers = Variable("FAKE_SERVERS", None, "Servers, which may carry a token.", secret=True)

    class WithServers(FakeBackend):
        variables: ClassVar[tuple[Variable, ...]] = (servers,)

        @classmethod
        def from_env(cls) -> WithServers:
            return cls(MemorySettings())

    def load(entry: BackendEntry) -> type[MessageQueueBackendProtocol]:
        return WithServers

    for value, shown in [
        ("nats://a:4222,nats://b:4222", "nats://a:4222,nats://b:4222"),
        ("tls://t0ken-s3cret@a:4222?auth_token=x1y2z3", "tls://***@a:4222?auth_token=***"),
    ]:
        text = "\n".join(
            await describe_backends([ENTRY], environ={"FAKE_SERVERS": value}, load=load)
        )
        row = next(line for line in text.splitlines() if "FAKE_SERVERS" in line)
        assert shown in row
        assert "t0ken-s3cret" not in text
        assert "x1y2z3" not in text


@pytest.mark.asyncio
async def test_from_env_problems_are_listed_without_secret_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_TOKEN", "s3cr3t-t0ken-value")
    monkeypatch.setenv("FAKE_URL", "http://elsewhere")
    monkeypatch.setenv("FAKE_RETRIES", "many")
    environ = {"FAKE_TOKEN": "s3cr3t-t0ken-value", "FAKE_URL": "http://elsewhere"}
    lines = await describe_backends([ENTRY], environ=environ, load=load_fake)
    text = "\n".join(lines)
    assert "s3cr3t-t0ken-value" not in text
    assert "from_env(): fails, 2 problem(s):" in text
    assert "    FAKE_URL: must start with fake://" in text
    assert "    FAKE_RETRIES: must be a whole number" in text
    unset_row = next(line for line in lines if "FAKE_RETRIES" in line and "retry" in line)
    assert unset_row.split()[:4] == ["FAKE_RETRIES", "unset", "-", "3"]


@pytest.mark.asyncio
async def test_a_secret_echoed_by_from_env_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TOKEN", "Xy7#q")
    text = "\n".join(
        await describe_backends([ENTRY], environ={"FAKE_TOKEN": "Xy7#q"}, load=load_fake)
    )
    assert "Xy7#q" not in text
    assert "    FAKE_TOKEN: is too short: '***'" in text


@pytest.mark.asyncio
async def test_a_backend_that_fails_to_import_is_an_error_line() -> None:
    def broken(entry: BackendEntry) -> type[MessageQueueBackendProtocol]:
        if entry.name == "fake":
            raise BackendNotFoundError("the 'fake' backend failed to import: pip install it")
        return entry.load_class()

    lines = await describe_backends([ENTRY, MEMORY], environ={}, load=broken)
    assert "  error: the 'fake' backend failed to import: pip install it" in lines
    assert any(line.startswith("  from_env(): OK") for line in lines)  # memory still shown


@pytest.mark.asyncio
async def test_the_chosen_backend_is_marked() -> None:
    lines = await describe_backends(
        [ENTRY, MEMORY], environ={"QUEUE_BACKEND": "fake"}, load=load_fake
    )
    assert any(line.startswith("  *  fake") for line in lines)
    assert "fake (abe-mq-fake 1.2.3)  * load_backend() builds this one" in lines
    assert "memory (abe-core " + abe.__version__ + ")" in lines


def test_choose_follows_the_loader() -> None:
    other = BackendEntry("other", "x:Y", "abe-mq-other", "1")
    assert choose([MEMORY], None).name == "memory"
    assert choose([MEMORY], "").name == "memory"
    assert choose([ENTRY, MEMORY], None).name == "fake"
    assert choose([ENTRY, MEMORY], " Memory ").name == "memory"
    several = choose([ENTRY, MEMORY, other], None)
    assert several.name is None
    assert "set QUEUE_BACKEND" in several.reason
    unknown = choose([MEMORY], "kafka")
    assert unknown.name is None
    assert "no message-queue backend named 'kafka'" in unknown.reason
