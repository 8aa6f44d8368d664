"""Contract 26: generated payloads, keys, groups and headers are refused before I/O or round-trip.

Hypothesis generates inputs of every shape (surrogates, control characters, NaN, huge
integers, deep nesting, broker control headers, names of every length). Each is either
refused by `publish` or `subscribe` with the error for its kind (PayloadError for
payloads and headers, InvalidKeyError for keys and groups), or published; afterwards
every published one must come back exactly as sent, and nothing else may arrive. An
input the rules let through but the broker cannot carry fails the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import string
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.headers import BROKER_CONTROL_PREFIXES, HEADER_PREFIX
from abe.errors import InvalidKeyError, PayloadError
from abe.testing.fixtures import Backends, ContractFixtures
from abe.testing.helpers import WAIT, nothing_arrives, receive, unique

__all__ = ["GeneratedInputContract", "header_maps", "key_suffixes", "payloads"]

_SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_GOOD_TEXT = st.one_of(
    st.text(st.characters(categories=["L", "N", "P", "S", "Zs", "Mn"]), max_size=20),
    st.text(string.printable, max_size=20),
)
_ANY_TEXT = st.one_of(
    _GOOD_TEXT,
    _GOOD_TEXT,
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zl", "Zp", "Co"]), max_size=4),
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**70, -(2**63)]),
    st.builds(pow, st.just(10), st.just(4400)),  # over Python's digit limit: refused
    st.floats(),
    _ANY_TEXT,
)


def payloads() -> st.SearchStrategy[Any]:
    """Mostly JSON objects of every shape, sometimes something that is not a dict at all."""
    values = st.recursive(
        _LEAVES,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(_ANY_TEXT, children, max_size=5)
        ),
        max_leaves=25,
    )
    return st.one_of(
        st.dictionaries(_ANY_TEXT, values, max_size=6),
        st.dictionaries(st.one_of(st.integers(), st.none(), _ANY_TEXT), values, max_size=3),
        values,
    )


_NAME_CHARACTERS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~" + " :\r\n\x00é\t/"


_TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


def header_maps() -> st.SearchStrategy[dict[str, str]]:
    """Header maps with names and values of every kind, broker control names included."""
    usual = st.dictionaries(
        st.text(_TOKEN, min_size=1, max_size=20),
        st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=40),
        max_size=4,
    )
    names = st.one_of(
        st.text(_NAME_CHARACTERS, min_size=0, max_size=30),
        st.sampled_from(
            [
                "abe-id",
                "ABE-Attempts",
                "Nats-Rollup",
                "nats-msg-id",
                "AWS.TraceHeader",
                "x-death",
                "x-delay",
                "data",
                "traceparent",
                "x-request-id",
                "n" * 257,
            ]
        ),
    )
    values = st.one_of(_ANY_TEXT, st.text(min_size=4000, max_size=4100))
    return st.one_of(usual, usual, usual, st.dictionaries(names, values, max_size=4))


def key_suffixes() -> st.SearchStrategy[str]:
    """What follows a unique prefix in a generated key: every character class, every length."""
    return st.one_of(
        st.text(string.ascii_letters + string.digits + "._-:", max_size=40),
        _ANY_TEXT,
        st.text("a.", min_size=1, max_size=6),
        st.integers(min_value=60, max_value=1100).map(lambda length: "k" * length),
    )


def _canonical(payload: Any, headers: dict[str, str]) -> str:
    return json.dumps([payload, headers], sort_keys=True)


@pytest.mark.asyncio
class GeneratedInputContract(ContractFixtures):
    """Property-based inputs: refused before I/O with the right error, or round-trip exactly."""

    examples: int = 150
    """How many generated payloads a run publishes (keys and groups get a third each)."""

    async def test_generated_inputs(self, backends: Backends, record_property: Any) -> None:
        backend = backends.new()
        loop = asyncio.get_running_loop()

        def run(coroutine: Coroutine[Any, Any, None]) -> None:
            asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=2 * WAIT)

        key = unique("generated")
        sent, keys, groups = await asyncio.to_thread(
            self._generate, backend, key, run, record_property
        )
        await _round_trip(backend, key, sent, keys, groups[:2])
        with contextlib.suppress(NotImplementedError):
            await backend.delete_keys([key, *keys])

    def _generate(
        self,
        backend: BaseBackend,
        key: str,
        run: Callable[[Coroutine[Any, Any, None]], None],
        record_property: Any,
    ) -> tuple[list[tuple[Any, dict[str, str]]], list[str], list[str]]:
        """Publish generated inputs (from a worker thread, on the test's event loop)."""
        sent: list[tuple[Any, dict[str, str]]] = []
        refused: dict[str, int] = {"payload": 0, "key": 0, "group": 0}

        @settings(_SETTINGS, max_examples=self.examples)
        @given(payload=payloads(), headers=header_maps())
        def publish(payload: Any, headers: dict[str, str]) -> None:
            try:
                run(backend.publish(key, payload, headers=headers))
            except PayloadError:
                refused["payload"] += 1
                return
            sent.append((payload, headers))

        keys: list[str] = []

        @settings(_SETTINGS, max_examples=max(10, self.examples // 3))
        @given(suffix=key_suffixes())
        def publish_to_key(suffix: str) -> None:
            generated = unique("gk") + suffix
            try:
                run(backend.publish(generated, {"key": generated}))
            except InvalidKeyError:
                refused["key"] += 1
                return
            if generated not in keys:
                keys.append(generated)

        groups: list[str] = []

        @settings(_SETTINGS, max_examples=max(10, self.examples // 3))
        @given(suffix=key_suffixes())
        def subscribe_group(suffix: str) -> None:
            group = unique("gg") + suffix
            try:
                subscription = backend.subscribe(group=group, keys=[key])
            except InvalidKeyError:
                refused["group"] += 1
                return
            run(subscription.aclose())  # never opened: nothing was sent
            groups.append(group)

        publish()
        publish_to_key()
        subscribe_group()
        record_property("generated_refused", json.dumps(refused))
        record_property("generated_published", len(sent))
        return sent, keys, groups


def _user_headers(headers: Any) -> dict[str, str]:
    """The headers of a delivery an application set: not abe's, not the broker's own."""
    return {
        name: value
        for name, value in headers.items()
        if not name.lower().startswith((HEADER_PREFIX, *BROKER_CONTROL_PREFIXES))
    }


async def _round_trip(
    backend: BaseBackend,
    key: str,
    sent: list[tuple[Any, dict[str, str]]],
    keys: list[str],
    groups: list[str],
) -> None:
    """Every published input comes back exactly, and nothing else does."""
    expected = sorted(_canonical(payload, headers) for payload, headers in sent)
    async with backend.subscribe(group=unique("check"), keys=[key]) as subscription:
        deliveries = await receive(subscription, len(sent), WAIT * 2)
        await nothing_arrives(subscription, 0.5)
    got = sorted(
        _canonical(delivery.payload, _user_headers(delivery.headers)) for delivery in deliveries
    )
    assert got == expected, "a published payload or header did not come back exactly as sent"
    for group in groups:  # a group with a generated name receives like any other
        group_key = unique("group-key")
        await backend.publish(group_key, {"group": group})
        async with backend.subscribe(group=group, keys=[group_key]) as subscription:
            (delivery,) = await receive(subscription, 1, WAIT * 2)
        assert delivery.payload == {"group": group}
        with contextlib.suppress(NotImplementedError):
            await backend.delete_keys([group_key])
    if keys:
        async with backend.subscribe(group=unique("keys"), keys=keys) as subscription:
            deliveries = await receive(subscription, len(keys), WAIT * 2)
        assert sorted(delivery.payload["key"] for delivery in deliveries) == sorted(keys)
        assert all(delivery.key == delivery.payload["key"] for delivery in deliveries)
