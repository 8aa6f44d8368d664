"""The settings every backend has, whatever its broker; providers extend this dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from abe.settings import OPERATION_TIMEOUT, PREFETCH, REDELIVERY_TIMEOUT, Environment

__all__ = ["BackendSettings"]


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """How much a consumer may hold, when unfinished work comes back, how long calls may take."""

    prefetch: int = 100
    """Most deliveries one subscription holds unsettled at once."""
    redelivery_timeout: float = 30.0
    """Seconds after which a delivered, unsettled message is delivered again."""
    operation_timeout: float = 10.0
    """Seconds a publish or acknowledgement may take before BackendUnavailableError."""
    poll_interval: float = 1.0
    """Longest a single fetch blocks before it returns empty (close interrupts it anyway)."""

    def __post_init__(self) -> None:
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {self.prefetch}")
        for name in ("redelivery_timeout", "operation_timeout", "poll_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    @staticmethod
    def read_common(env: Environment) -> dict[str, Any]:
        """The common settings the environment sets, as keyword arguments for the dataclass."""
        values: dict[str, Any] = {
            "prefetch": env.integer(PREFETCH, minimum=1, maximum=100_000),
            "redelivery_timeout": env.seconds(REDELIVERY_TIMEOUT, minimum=0.1, maximum=43_200),
            "operation_timeout": env.seconds(OPERATION_TIMEOUT, minimum=0.1, maximum=3_600),
        }
        return {name: value for name, value in values.items() if value is not None}

    def describe(self) -> dict[str, object]:
        """Field names and values for display; secrets show as '***' through their repr."""
        return {field.name: getattr(self, field.name) for field in fields(self)}
