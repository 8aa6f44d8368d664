"""A check a provider runs in its unit tests: its ErrorMap covers every exception of its client.

    def test_every_aiokafka_error_is_mapped() -> None:
        assert_error_map_covers(KafkaBackend.errors, aiokafka.errors)

It walks the exception classes the given modules define and fails naming each one that
neither it nor any base class of its is listed for, so a new release of the client
library cannot slip an unmapped error past the map.
"""

from __future__ import annotations

import inspect
import types

from abe.backends.message_queue.base.error_map import ErrorMap

__all__ = ["assert_error_map_covers", "exception_classes"]


def exception_classes(*modules: types.ModuleType) -> list[type[BaseException]]:
    """Every exception class the modules define (not those they only import)."""
    found: dict[type[BaseException], None] = {}
    for module in modules:
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith(module.__name__):
                found[value] = None
    return list(found)


def assert_error_map_covers(
    errors: ErrorMap | None, *modules: types.ModuleType, at_least: int = 1
) -> None:
    """Fail naming each exception class of `modules` that `errors` has no entry for."""
    assert errors is not None, "the backend declares no ErrorMap (the `errors` ClassVar)"
    classes = exception_classes(*modules)
    assert len(classes) >= at_least, f"found only {len(classes)} exception classes: wrong module?"
    missing = errors.missing(classes)
    names = ", ".join(f"{klass.__module__}.{klass.__qualname__}" for klass in missing)
    assert not missing, f"{len(missing)} exception class(es) have no entry in the map: {names}"
