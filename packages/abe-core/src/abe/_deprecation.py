"""Old import paths kept as thin aliases: each use warns with the new name."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["moved"]


def moved(old_module: str, old_name: str, new_module: str, new_name: str) -> Any:
    """The object now at `new_module.new_name`, with a DeprecationWarning naming it."""
    try:
        found = getattr(importlib.import_module(new_module), new_name)
    except AttributeError:
        raise AttributeError(f"module {old_module!r} has no attribute {old_name!r}") from None
    warnings.warn(
        f"{old_module}.{old_name} is deprecated; import {new_module}.{new_name} instead",
        DeprecationWarning,
        stacklevel=3,
    )
    return found
