"""The old home of `bounded`; it lives in `deadlines` now, with the rest of core's waiting."""

from abe.backends.message_queue.base.deadlines import bounded

__all__ = ["bounded"]
