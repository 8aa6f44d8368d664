"""Contract 16-19: bad payloads, keys and settings are refused clearly, before any I/O."""

from __future__ import annotations

import socket
from typing import Any, NoReturn

import pytest

from abe.errors import ConfigurationError, InvalidKeyError, PayloadError
from abe.testing.fixtures import (
    BackendFactory,
    Backends,
    ContractFixtures,
    EnvironmentCase,
)
from abe.testing.helpers import receive_payloads, unique

__all__ = ["InputContract"]


def bad_payloads(limit: int) -> list[tuple[str, Any]]:
    return [
        ("a list", [1, 2, 3]),
        ("a string", "hello"),
        ("None", None),
        ("an object", {"when": object()}),
        ("a set", {"tags": {"a", "b"}}),
        ("bytes", {"raw": b"\x00\x01"}),
        ("NaN", {"value": float("nan")}),
        ("infinity", {"value": float("inf")}),
        ("a tuple", {"pair": (1, 2)}),
        ("an int key", {1: "one"}),
        ("too large", {"blob": "x" * (limit + 1)}),
    ]


def _no_network(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("from_env() opened a network connection; it must only read settings")


@pytest.mark.asyncio
class InputContract(ContractFixtures):
    """What abe refuses, and how it says so."""

    async def test_bad_payloads(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("payloads")
        for what, payload in bad_payloads(backend.max_payload_bytes):
            with pytest.raises(PayloadError) as refused:
                await backend.publish(key, payload)
            assert str(refused.value), what
            with pytest.raises(PayloadError):
                await backend.publish_many(key, [{"fine": 1}, payload, {"fine": 2}])
        await backend.publish(key, {"only": "this"})
        got = await receive_payloads(backend, [key], unique("group"), 1)
        assert got == [{"only": "this"}], "a refused payload was published"

    async def test_largest_payload_round_trips(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("large")
        overhead = len('{"blob":""}')
        payload = {"blob": "x" * (backend.max_payload_bytes - overhead)}
        await backend.publish(key, payload)
        got = await receive_payloads(backend, [key], unique("group"), 1)
        assert got == [payload], "the declared max_payload_bytes does not hold"

    async def test_bad_keys(self, backends: Backends, refused_keys: tuple[str, ...]) -> None:
        backend = backends.new()
        longest = backend.key_rules.max_length - len("-dlq")
        bad = ["", "x" * (longest + 1), "has space", "tab\tkey", "new\nline", *refused_keys]
        for key in bad:
            with pytest.raises(InvalidKeyError) as refused:
                await backend.publish(key, {"x": 1})
            assert "key" in str(refused.value)
            with pytest.raises(InvalidKeyError):
                backend.subscribe(group=unique("group"), keys=[key])
        longest_key = unique("long")
        longest_key += "x" * (longest - len(longest_key))
        await backend.publish(longest_key, {"longest": True})
        assert await receive_payloads(backend, [longest_key], unique("g"), 1) == [{"longest": True}]

    async def test_from_env_errors(
        self,
        backend_factory: BackendFactory,
        invalid_environments: list[EnvironmentCase],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        backend_class = type(backend_factory())
        assert invalid_environments, "give at least one environment from_env() must refuse"
        monkeypatch.setattr(socket.socket, "connect", _no_network)
        for case in invalid_environments:
            with monkeypatch.context() as env:
                for variable in backend_class.variables:
                    env.delenv(variable.name, raising=False)
                for name, value in case.env.items():
                    env.setenv(name, value)
                with pytest.raises(ConfigurationError) as refused:
                    backend_class.from_env()
            for name in case.variables:
                assert name in refused.value.variables, f"{name} not blamed: {refused.value}"
                assert name in str(refused.value)
