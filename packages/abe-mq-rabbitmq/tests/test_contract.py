"""abe's contract suite (abe.testing, CONTRACT.md) against RabbitmqBackend.

Out of the box the broker runs in this process (`capabilities.remote` is False), so
this class subclasses `CoreContract`: every behaviour except outages, restarts and
refused credentials, which an in-process broker cannot show. Once the backend talks
to a real broker: set `remote=True`, subclass `BackendContract` instead, point the
hooks below at a test broker, and fill in the three remote hooks sketched at the end
(`test_a_remote_broker_gets_the_whole_suite` fails until you do).
A test needing a broker is best kept apart from the fast offline ones (e.g. in a
`tests-integration/` folder that CI runs with a broker up).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from abe import MemoryBroker
from abe.provider import OutgoingMessage
from abe.testing import (
    BackendContract,
    BackendFactory,
    CoreContract,
    EnvironmentCase,
    RawWriter,
    unique,
)

from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings


class TestRabbitmqContract(CoreContract):
    """Every contract test that applies; the suite's tests are inherited, only hooks live here."""

    @pytest.fixture
    def broker_url(self) -> str:
        """The broker for one test. In-process: a fresh one, named by its URL.

        With a real broker: the test broker's address (from an environment variable, or
        a container the fixture starts). Tests stay apart through unique keys and groups.
        """
        return f"rabbitmq://{unique('broker')}"

    @pytest.fixture
    def backend_factory(self, broker_url: str) -> BackendFactory:
        """Builds backends on the test broker, with a short redelivery timeout (1 to 3 s)."""

        def make(*, prefetch: int | None = None) -> RabbitmqBackend:
            settings = RabbitmqSettings(url=broker_url, redelivery_timeout=1.0)
            if prefetch is not None:
                settings = replace(settings, prefetch=prefetch)
            return RabbitmqBackend(settings)

        return make

    @pytest.fixture
    def write_raw(self, broker_url: str) -> RawWriter:
        """Writes a raw body the way a producer that does not use abe would (poison bodies)."""

        async def write(key: str, body: bytes) -> None:
            # BROKER CALL: publish `body` to `key` with your client library alone: no abe,
            # no headers.
            MemoryBroker.named(broker_url).append(key, [OutgoingMessage("raw", body, {})])

        return write

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        """Environments from_env() must refuse, and the variables it must blame for each."""
        return [
            EnvironmentCase(
                {"RABBITMQ_URL": "http://localhost:7000"},
                ("RABBITMQ_URL",),
            ),
            EnvironmentCase(
                {"RABBITMQ_URL": "rabbitmq://user:pa55@localhost:7000"},
                ("RABBITMQ_URL",),
            ),
            EnvironmentCase(
                {
                    "RABBITMQ_URL": "rabbitmq://localhost:port",
                    "ABE_MQ_PREFETCH": "0",
                    "ABE_MQ_REDELIVERY_TIMEOUT": "soon",
                },
                ("RABBITMQ_URL", "ABE_MQ_PREFETCH", "ABE_MQ_REDELIVERY_TIMEOUT"),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        """Keys the broker refuses beyond the ones every broker does (empty, too long, spaces)."""
        return ("orders/created", "orders*", "ordérs")


def test_a_remote_broker_gets_the_whole_suite() -> None:
    """CoreContract leaves out outages, restarts and refused credentials: enough in-process only."""
    if RabbitmqBackend.capabilities.remote:
        assert issubclass(TestRabbitmqContract, BackendContract), (
            "capabilities.remote is True: subclass BackendContract (see the end of this file)"
        )


# ---- once the broker is another process (capabilities.remote = True) --------------------
#
# from abe.testing import RestartableBroker, SecretCase, TlsMismatch
#
# class TestRabbitmqContract(BackendContract):
#     ...the hooks above, pointed at the test broker, plus these three:
#
#     @pytest.fixture
#     def restartable_broker(self) -> RestartableBroker:
#         """A broker this test owns (a server process on a free port, or a container):
#         backends built on it, and a coroutine function that stops and starts it again."""
#         server = start_your_broker()                 # yours to write
#
#         def make(*, prefetch: int | None = None) -> RabbitmqBackend:
#             settings = RabbitmqSettings(url=server.url, operation_timeout=3.0)
#             return RabbitmqBackend(settings)
#
#         return RestartableBroker(make, server.restart)
#
#     @pytest.fixture
#     def unreachable_backend_factory(self) -> BackendFactory:
#         """Backends pointed at an address where nothing listens: publish must raise
#         BackendUnavailableError within operation_timeout (+5 s), not hang."""
#
#         def make(*, prefetch: int | None = None) -> RabbitmqBackend:
#             nowhere = "rabbitmq://127.0.0.1:1"  # nothing listens on port 1
#             settings = RabbitmqSettings(url=nowhere, operation_timeout=2.0)
#             return RabbitmqBackend(settings)
#
#         return make
#
#     @pytest.fixture
#     def secret_environment(self) -> SecretCase:
#         """Environment holding a token the broker refuses: the suite checks the token
#         never shows in a repr, an error or a log record (your client library's included)."""
#         wrong = "wr0ng-t0ken-Zq81x"
#         return SecretCase(
#             env={
#                 "RABBITMQ_URL": "rabbitmq://127.0.0.1:7000",
#                 "RABBITMQ_TOKEN": wrong,
#             },
#             secret=wrong,
#         )
#
#     @pytest.fixture
#     def tls_mismatch(self) -> TlsMismatch:
#         """A backend asking for TLS, holding a token, and a plaintext test broker: the
#         suite puts a recording proxy between them and fails if the token crosses it."""
#         def at(host: str, port: int) -> RabbitmqBackend:
#             url = f"rabbitmqs://{host}:{port}"       # your TLS scheme or setting
#             settings = RabbitmqSettings(url=url, token=Secret("t0ken-Zq81x"))
#             return RabbitmqBackend(settings)
#
#         return TlsMismatch(at, ("127.0.0.1", 7000), "t0ken-Zq81x")
