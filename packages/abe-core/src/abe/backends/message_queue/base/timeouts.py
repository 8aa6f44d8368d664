"""Waiting with a deadline without losing a cancellation, on every supported Python.

`asyncio.wait_for` on Python 3.10 and 3.11 can swallow a cancellation that arrives as
the awaited thing finishes (CPython gh-86296), leaving a loop that was told to stop
running forever. This waits with `asyncio.timeout` where it exists (3.11+) and with
`asyncio.wait` on 3.10, which never swallows one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["bounded"]

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, or raise asyncio.TimeoutError after `seconds`."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.TimeoutError
    return task.result()
