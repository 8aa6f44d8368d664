"""The whole contract suite, as one class or as the part every backend (even in-process) passes."""

from __future__ import annotations

from abe.testing.delivery import DeliveryContract
from abe.testing.generated import GeneratedInputContract
from abe.testing.groups import GroupContract
from abe.testing.hostile import HostileInputContract
from abe.testing.inputs import InputContract
from abe.testing.lifecycle import LifecycleContract
from abe.testing.remote import RemoteBrokerContract
from abe.testing.roundtrip import RoundTripContract

__all__ = ["BackendContract", "CoreContract"]


class CoreContract(
    RoundTripContract,
    GroupContract,
    DeliveryContract,
    InputContract,
    HostileInputContract,
    GeneratedInputContract,
    LifecycleContract,
):
    """Every behaviour a backend shows whether its broker is remote or in this process."""


class BackendContract(CoreContract, RemoteBrokerContract):
    """Every behaviour of CONTRACT.md. Subclass as `Test<Broker>Contract` and fill the hooks.

        class TestRedisContract(BackendContract):
            @pytest.fixture
            def backend_factory(self, redis_broker): ...
            @pytest.fixture
            def write_raw(self, redis_broker): ...
            ...

    Hooks (fixtures) to override: `backend_factory`, `write_raw`, `invalid_environments`,
    `restartable_broker`, `unreachable_backend_factory` and `secret_environment`;
    optionally `refused_keys`. A backend whose broker runs inside the process
    (`capabilities.remote` is False) subclasses `CoreContract` instead.
    """
