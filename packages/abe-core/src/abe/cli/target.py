"""What `abe run MODULE:NAME` runs: NAME imported from MODULE, checked, made one handler.

NAME is either an async function taking the payload, or a mapping of key to such a
function (then each delivery goes to its key's handler, and the keys default to the
mapping's). Every problem is a CommandError with exit code 2 that says what to change.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from abe.backends.message_queue.consumer import Handler, current_delivery
from abe.cli.errors import EXIT_USAGE, CommandError
from abe.types import MessageQueuePayload

__all__ = ["Target", "load_target", "split_keys"]


@dataclass(frozen=True)
class Target:
    """The handler `abe run` gives the consumer, and the keys it reads (None: ABE_MQ_KEYS)."""

    spec: str
    handler: Handler
    keys: tuple[str, ...] | None
    routed: bool
    """Whether NAME was a mapping, each key going to its own handler."""


def split_keys(text: str) -> tuple[str, ...]:
    """`"a, b,,c"` as ("a", "b", "c"): comma-separated, blanks dropped, duplicates once."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def load_target(spec: str, keys: Sequence[str] | None) -> Target:
    """Import MODULE, find NAME, and check it can handle payloads (of `keys`, if given)."""
    module_name, _, name = spec.partition(":")
    module_name, name = module_name.strip(), name.strip()
    if not module_name or not name:
        raise _usage(
            f"{spec!r} is not MODULE:NAME; name the module and the handler in it, "
            f"as in `abe run service:handle`"
        )
    module = _import(module_name)
    found = _attribute(module, module_name, name)
    where = f"{module_name}:{name}"
    if isinstance(found, Mapping):
        return _routed(spec, where, found, keys)
    _check_handler(found, where)
    return Target(spec, found, tuple(keys) if keys else None, routed=False)


def _usage(message: str) -> CommandError:
    return CommandError(message, EXIT_USAGE)


def _import(module_name: str) -> Any:
    """The module, importable from the current directory as with `python -m`."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(f"{exc.name}.")
        ):
            raise _usage(
                f"no module named {module_name!r} in {here} or on the Python path; run "
                f"`abe run` from the folder that holds it, or add that folder to PYTHONPATH"
            ) from exc
        raise _failed_import(module_name, exc) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the module's own code failed: SyntaxError, a raise, exit
        raise _failed_import(module_name, exc) from exc


def _failed_import(module_name: str, error: BaseException) -> CommandError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = f"{type(error).__name__}: {'; '.join(lines)}" if lines else type(error).__name__
    return _usage(
        f"importing {module_name!r} failed: {detail} (rerun with --debug for the traceback)"
    )


def _attribute(module: Any, module_name: str, name: str) -> Any:
    found = module
    for part in name.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            candidates = _handlers_in(module)
            hint = f"; it has {', '.join(candidates)}" if candidates else ""
            raise _usage(f"{module_name!r} has no {name!r}{hint}") from None
    return found


def _handlers_in(module: Any) -> list[str]:
    """Names in the module that could be a NAME: async functions and mappings of them."""

    def usable(value: object) -> bool:
        if isinstance(value, Mapping):
            return bool(value) and all(map(_is_async, value.values()))
        return _is_async(value) and getattr(value, "__module__", None) == module.__name__

    return [
        attribute
        for attribute, value in sorted(vars(module).items())
        if not attribute.startswith("_") and usable(value)
    ]


def _is_async(value: object) -> bool:
    """An `async def` function, or an object whose `__call__` is one."""
    if inspect.iscoroutinefunction(value):
        return True
    call = getattr(value, "__call__", None)  # noqa: B004  (a class instance's async __call__)
    return not inspect.isclass(value) and inspect.iscoroutinefunction(call)


def _check_handler(value: object, where: str) -> None:
    if not callable(value):
        raise _usage(
            f"{where} is a {type(value).__name__}, not a handler; NAME must be an async "
            f"function taking the payload, or a mapping of key to such functions"
        )
    if not _is_async(value):
        raise _usage(
            f"{where} is not async; define it with `async def {_name_of(value)}(payload: dict)`"
        )
    try:
        inspect.signature(value).bind({})
    except TypeError:
        raise _usage(f"{where} must take one argument, the payload") from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        pass


def _name_of(value: object) -> str:
    return str(getattr(value, "__name__", "handle"))


def _routed(
    spec: str, where: str, handlers: Mapping[Any, Any], keys: Sequence[str] | None
) -> Target:
    """One handler that sends each delivery to its key's handler in `handlers`."""
    if not handlers:
        raise _usage(f"{where} is an empty mapping; map each key to its async handler")
    table: dict[str, Handler] = {}
    for key, handler in handlers.items():
        if not isinstance(key, str) or not key:
            raise _usage(f"{where} maps {key!r}; its keys must be the message keys, as strings")
        _check_handler(handler, f"{where}[{key!r}]")
        table[key] = handler
    chosen = tuple(keys) if keys else tuple(table)
    missing = [key for key in chosen if key not in table]
    if missing:
        raise _usage(
            f"--keys names {', '.join(missing)}, which {where} has no handler for; "
            f"it handles {', '.join(table)}"
        )
    return Target(spec, _dispatch(table), chosen, routed=True)


def _dispatch(table: Mapping[str, Handler]) -> Callable[[MessageQueuePayload], Any]:
    async def dispatch(payload: MessageQueuePayload) -> object:
        return await table[current_delivery().key](payload)

    return dispatch
