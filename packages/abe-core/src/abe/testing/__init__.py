"""The provider contract suite: the behaviour every abe backend proves against its broker.

Install with `pip install abe-core[testing]`, subclass `BackendContract` (or the group
classes) in a test module, and override the hook fixtures of `ContractFixtures`.
"""

from importlib.util import find_spec

if find_spec("pytest") is None or find_spec("pytest_asyncio") is None:  # pragma: no cover
    raise ImportError(
        "abe.testing needs pytest and pytest-asyncio; install them with: "
        "pip install 'abe-core[testing]'"
    )

from abe.testing.contract import BackendContract, CoreContract
from abe.testing.delivery import DeliveryContract
from abe.testing.error_maps import assert_error_map_covers, exception_classes
from abe.testing.fixtures import (
    BackendFactory,
    Backends,
    ContractFixtures,
    EnvironmentCase,
    MalformedWrite,
    RawWriter,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)
from abe.testing.generated import GeneratedInputContract
from abe.testing.groups import GroupContract
from abe.testing.helpers import unique
from abe.testing.hostile import HostileInputContract
from abe.testing.inputs import InputContract
from abe.testing.lifecycle import LifecycleContract
from abe.testing.proxy import RecordingProxy
from abe.testing.remote import RemoteBrokerContract
from abe.testing.roundtrip import RoundTripContract

__all__ = [
    "BackendContract",
    "BackendFactory",
    "Backends",
    "ContractFixtures",
    "CoreContract",
    "DeliveryContract",
    "EnvironmentCase",
    "GeneratedInputContract",
    "GroupContract",
    "HostileInputContract",
    "InputContract",
    "LifecycleContract",
    "MalformedWrite",
    "RawWriter",
    "RecordingProxy",
    "RemoteBrokerContract",
    "RestartableBroker",
    "RoundTripContract",
    "SecretCase",
    "TlsMismatch",
    "assert_error_map_covers",
    "exception_classes",
    "unique",
]
