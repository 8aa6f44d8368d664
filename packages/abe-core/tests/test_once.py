"""OncePerKey: one run per key however many wait, failures not remembered, forgetting."""

from __future__ import annotations

import asyncio
import gc

import pytest

from abe.provider import OncePerKey


class Maker:
    """Makes `key-<n>` for the n-th run of a key, when `release` is set; may fail first."""

    def __init__(self, failures: int = 0, *, released: bool = False) -> None:
        self.runs: list[str] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()
        self.failures = failures
        if released:
            self.release.set()

    async def __call__(self, key: str) -> str:
        self.runs.append(key)
        self.started.set()
        try:
            await self.release.wait()
            if len(self.runs) <= self.failures:
                raise RuntimeError(f"refused {key}")
            return f"{key}-{len(self.runs)}"
        finally:
            self.ended.set()


async def cancel(waiter: asyncio.Future[str]) -> None:
    """Cancel a waiter and see it end."""
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()


@pytest.mark.asyncio
async def test_one_run_however_many_wait_then_the_value_is_remembered() -> None:
    maker = Maker()
    once: OncePerKey[str, str] = OncePerKey(maker)
    waiters = [asyncio.ensure_future(once.get("orders")) for _ in range(5)]
    await maker.started.wait()
    assert "orders" not in once  # in flight is not known
    maker.release.set()
    assert await asyncio.gather(*waiters) == ["orders-1"] * 5
    assert await once.get("orders") == "orders-1"
    assert maker.runs == ["orders"]
    assert "orders" in once
    assert len(once) == 1


@pytest.mark.asyncio
async def test_keys_run_apart() -> None:
    maker = Maker(released=True)
    once: OncePerKey[str, str] = OncePerKey(maker)
    assert await asyncio.gather(once.get("a"), once.get("b")) == ["a-1", "b-2"]


@pytest.mark.asyncio
async def test_a_failure_reaches_every_waiter_and_the_next_call_runs_again() -> None:
    maker = Maker(failures=1)
    once: OncePerKey[str, str] = OncePerKey(maker)
    waiters = [asyncio.ensure_future(once.get("orders")) for _ in range(3)]
    await maker.started.wait()
    maker.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(result) for result in results] == ["refused orders"] * 3
    assert "orders" not in once
    assert await once.get("orders") == "orders-2"
    assert maker.runs == ["orders", "orders"]


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_the_run_to_the_others() -> None:
    maker = Maker()
    once: OncePerKey[str, str] = OncePerKey(maker)
    cancelled = asyncio.ensure_future(once.get("orders"))
    other = asyncio.ensure_future(once.get("orders"))
    await maker.started.wait()
    await cancel(cancelled)
    maker.release.set()
    assert await other == "orders-1"
    assert maker.runs == ["orders"]


@pytest.mark.asyncio
async def test_a_run_every_waiter_left_still_ends_and_is_remembered() -> None:
    maker = Maker()
    once: OncePerKey[str, str] = OncePerKey(maker)
    waiter = asyncio.ensure_future(once.get("orders"))
    await maker.started.wait()
    await cancel(waiter)
    maker.release.set()
    assert await once.get("orders") == "orders-1"  # joins the run still in flight
    assert maker.runs == ["orders"]


@pytest.mark.asyncio
async def test_a_failure_nobody_awaited_is_not_reported_as_lost() -> None:
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
    maker = Maker(failures=1)
    once: OncePerKey[str, str] = OncePerKey(maker)
    waiter = asyncio.ensure_future(once.get("orders"))
    await maker.started.wait()
    await cancel(waiter)
    maker.release.set()
    await maker.ended.wait()
    await asyncio.sleep(0)  # the run's done callbacks are called one turn after it ends
    gc.collect()  # a future whose exception was never retrieved reports it when collected
    assert reported == []
    assert await once.get("orders") == "orders-2"


@pytest.mark.asyncio
async def test_forget_drops_a_key_and_only_the_stale_value_when_given() -> None:
    maker = Maker(released=True)
    once: OncePerKey[str, str] = OncePerKey(maker)
    await once.get("orders")
    once.forget("orders", "orders-0")  # not the value it has: kept
    assert await once.get("orders") == "orders-1"
    once.forget("orders", "orders-1")
    assert "orders" not in once
    assert await once.get("orders") == "orders-2"
    once.forget("orders")
    once.forget("unknown")  # nothing to drop: no error
    assert await once.get("orders") == "orders-3"


@pytest.mark.asyncio
async def test_remember_and_clear() -> None:
    maker = Maker(released=True)
    once: OncePerKey[str, str] = OncePerKey(maker)
    once.remember("orders", "known")
    assert await once.get("orders") == "known"
    assert maker.runs == []
    once.clear()
    assert len(once) == 0
    assert await once.get("orders") == "orders-1"
