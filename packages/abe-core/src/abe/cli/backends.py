"""`abe backends`: what is installed, what each backend reads from the environment, what loads.

The list comes from entry-point metadata, without importing anything; then each class
is imported (a failure becomes that backend's error line) to show its variables and
whether `from_env()` accepts the current environment. Values of secret variables are
never shown, only whether they are set; passwords inside URLs are masked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from abe.backends.message_queue.loader import (
    BACKEND_VARIABLE,
    BackendEntry,
    available_backends,
    choose_backend,
)
from abe.cli.connect import close_backend
from abe.cli.errors import EXIT_OK
from abe.cli.output import table
from abe.errors import BackendNotFoundError, ConfigurationError
from abe.settings import Variable, redact_url
from abe.types import MessageQueueBackendProtocol

__all__ = ["Choice", "add_parser", "choose", "describe_backends", "run"]

MEMORY = "memory"

Loader = Callable[[BackendEntry], type[MessageQueueBackendProtocol]]
"""Imports a backend's class; `BackendEntry.load_class` outside of tests."""


@dataclass(frozen=True)
class Choice:
    """Which backend `load_backend()` would build, and why (name None: it would fail)."""

    name: str | None
    reason: str


def choose(entries: Sequence[BackendEntry], queue_backend: str | None) -> Choice:
    """What `load_backend()` picks among `entries`, by the loader's own rule."""
    environ = {} if queue_backend is None else {BACKEND_VARIABLE: queue_backend}
    try:
        picked = choose_backend(environ=environ, entries=entries)
    except BackendNotFoundError as exc:
        return Choice(None, str(exc))
    return Choice(picked.entry.name, picked.reason)


async def describe_backends(
    entries: Sequence[BackendEntry],
    *,
    environ: Mapping[str, str],
    load: Loader = BackendEntry.load_class,
) -> list[str]:
    """The report `abe backends` prints, as lines."""
    choice = choose(entries, environ.get(BACKEND_VARIABLE))
    lines = [f"Installed message-queue backends ({len(entries)}):"]
    rows = [
        [
            "*" if entry.name == choice.name else " ",
            entry.name,
            entry.origin,
            entry.target,
        ]
        for entry in entries
    ]
    lines += table(rows, indent=2)
    picked = choice.name if choice.name is not None else "nothing"
    lines.append(f"load_backend() builds: {picked} ({choice.reason})")
    for entry in entries:
        lines.append("")
        chosen = "  * load_backend() builds this one" if entry.name == choice.name else ""
        lines.append(f"{entry.name} ({entry.origin}){chosen}")
        lines += await _describe_class(entry, environ, load)
    return lines


async def _describe_class(
    entry: BackendEntry, environ: Mapping[str, str], load: Loader
) -> list[str]:
    try:
        backend_class = load(entry)
    except Exception as exc:
        return [f"  error: {exc}"]
    variables = [
        variable
        for variable in getattr(backend_class, "variables", ())
        if isinstance(variable, Variable)
    ]
    lines = []
    if variables:
        rows = [_variable_row(variable, environ) for variable in variables]
        lines += table(rows, header=["VARIABLE", "STATE", "VALUE", "DEFAULT", "MEANING"], indent=2)
    else:
        lines.append("  (declares no environment variables)")
    secrets = [environ.get(v.name, "").strip() for v in variables if v.secret]
    lines += [_scrubbed(line, secrets) for line in await _try_from_env(backend_class)]
    return lines


def _scrubbed(text: str, secrets: Sequence[str]) -> str:
    """The text with any secret value in it replaced by ***, should an error have echoed one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _variable_row(variable: Variable, environ: Mapping[str, str]) -> list[str]:
    """NAME, set/unset, the value (never a secret's), the default, the meaning."""
    text = environ.get(variable.name, "").strip()
    if not text:
        value = "-"
    elif variable.secret and "://" not in text:
        value = "(secret, not shown)"
    else:  # a URL shows where it points; its credentials and secret options show as ***
        value = redact_url(text)
    default = "-" if variable.default is None else variable.default
    return [variable.name, "set" if text else "unset", value, default, variable.meaning]


async def _try_from_env(backend_class: type[MessageQueueBackendProtocol]) -> list[str]:
    try:
        backend = backend_class.from_env()
    except ConfigurationError as exc:
        lines = [f"  from_env(): fails, {len(exc.problems)} problem(s):"]
        lines += [f"    {name}: {reason}" for name, reason in exc.problems.items()]
        return lines
    except Exception as exc:
        return [f"  from_env(): fails: {type(exc).__name__}: {exc}"]
    description = repr(backend)
    await close_backend(backend)
    return [f"  from_env(): OK, builds {description}"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe backends`."""
    return commands.add_parser(
        "backends",
        help="list installed backends, their environment variables and what loads",
        description=(
            "List every installed message-queue backend with its distribution and version, "
            "the environment variables each reads (secret values are never shown), whether "
            "from_env() accepts the current environment, and which one load_backend() builds. "
            "Nothing connects to a broker."
        ),
    )


def run(args: argparse.Namespace) -> int:
    """List the backends on stdout."""
    entries = available_backends()
    lines = asyncio.run(describe_backends(entries, environ=os.environ))
    print("\n".join(lines))
    return EXIT_OK
