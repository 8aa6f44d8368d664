"""Names the documentation's snippets use as placeholders for an application's own code.

tools/check_examples.py puts this before each snippet that awaits at its top level, and
checks the snippet as the body of `async def snippet(backend: Backend) -> None`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from abe import AsyncLoopConsumer, Backend, current_delivery, load_backend

__all__ = ["AsyncLoopConsumer", "Backend", "InvalidOrder", "asyncio", "bill", "current_delivery"]
__all__ += ["load_backend", "ship"]


class InvalidOrder(Exception):
    """An order no retry can fix."""


async def bill(order: dict[str, Any]) -> None:
    """Bills an order (the application's code)."""


async def ship(order: dict[str, Any]) -> None:
    """Ships an order (the application's code)."""
