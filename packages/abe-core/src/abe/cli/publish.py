"""`abe publish KEY JSON`: publish one payload from a shell; bad input is refused before I/O."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from abe.cli.connect import FALLBACK_NOTE, close_backend, load, require_base
from abe.cli.errors import EXIT_OK, EXIT_USAGE, CommandError
from abe.cli.output import note

__all__ = ["add_parser", "parse_headers", "parse_payload", "run"]

_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def parse_payload(text: str) -> dict[str, Any]:
    """The JSON object in `text`, or a CommandError (exit 2) naming the problem and where it is."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}" if "\n" in text else f"column {exc.colno}"
        near = text[max(0, exc.pos - 15) : exc.pos + 15]
        raise CommandError(
            f"the payload is not valid JSON: {exc.msg} at {where}, near {near!r}; "
            f"quote it for the shell, e.g. '{{\"id\": 1}}'",
            EXIT_USAGE,
        ) from None
    except ValueError as exc:
        raise CommandError(f"the payload is not valid JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        kind = "null" if value is None else _KINDS.get(type(value), type(value).__name__)
        raise CommandError(
            f"the payload must be a JSON object ({{...}}), got {kind}; "
            f'wrap it, e.g. {{"value": ...}}',
            EXIT_USAGE,
        )
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not part of JSON; send null or a string instead")


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """NAME=VALUE pairs as a dict, or a CommandError (exit 2) naming the malformed one."""
    headers: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise CommandError(
                f"--header {item!r} is not NAME=VALUE, e.g. --header trace-id=abc123", EXIT_USAGE
            )
        headers[name.strip()] = value
    return headers


async def publish(key: str, payload: dict[str, Any], headers: dict[str, str]) -> str:
    """Publish through the configured backend and close it; returns the backend's name."""
    loaded = load()
    if loaded.fallback:
        note(FALLBACK_NOTE)
    try:
        backend = require_base(loaded.backend, "publish")
        if not backend.capabilities.remote:
            note(
                f"note: the {backend.name} backend keeps messages inside this process, so this "
                f"one is gone when abe exits"
            )
        await backend.publish(key, payload, headers=headers)
        return backend.name
    finally:
        await close_backend(loaded.backend)


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe publish`."""
    parser = commands.add_parser(
        "publish",
        help="publish one JSON payload to a key",
        description=(
            "Publish one payload, a JSON object, to KEY through the configured backend. "
            "Bad JSON, a payload that is not an object, or a key the broker refuses exit "
            "with 2 before anything is sent."
        ),
    )
    parser.add_argument("key", metavar="KEY", help="the stream, topic, subject or queue")
    parser.add_argument(
        "payload", metavar="JSON", help="the payload, a JSON object; - reads it from stdin"
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header to send with the message (repeatable)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Publish one payload; say where it went on stdout."""
    text = sys.stdin.read() if args.payload == "-" else args.payload
    payload = parse_payload(text)
    headers = parse_headers(args.header)
    name = asyncio.run(publish(args.key, payload, headers))
    print(f"published to {args.key} on {name}", flush=True)
    return EXIT_OK
