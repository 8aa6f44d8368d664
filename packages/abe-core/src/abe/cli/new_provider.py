"""`abe new-provider NAME`: a provider package for another broker, copied from abe's template.

The template ships inside abe-core (`abe/_templates/provider`, linked from
`templates/provider` in abe's repository). It is a working provider named `example`
whose broker calls go to abe's in-process broker, so a copy passes the contract suite
before its author changes a line. Rendering copies it with every spelling of the
template's name replaced by the new name's, in file contents and in paths:

    abe-mq-example -> abe-mq-NAME     the distribution
    abe_mq_example -> abe_mq_NAME     the import package ('-' becomes '_')
    Example        -> Name            ExampleBackend, ExampleSettings, ExampleReceiver
    EXAMPLE        -> NAME            EXAMPLE_URL, ABE_EXAMPLE_* ('-' becomes '_')
    example        -> NAME            the entry point, QUEUE_BACKEND value and URL scheme
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from abe.backends.message_queue.loader import available_backends
from abe.cli.errors import EXIT_OK, EXIT_USAGE, CommandError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "FIRST_PARTY",
    "TEMPLATE_NAME",
    "ProviderNames",
    "add_parser",
    "check_name",
    "render",
    "run",
    "template_files",
]

TEMPLATE_NAME = "example"
"""The name the template is written with; every spelling of it is replaced when rendering."""

FIRST_PARTY = ("memory", "redis", "kafka", "nats", "sqs")
"""Backends abe ships itself: their names (and distributions) are taken."""

_VALID = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_LENGTH = 20
"""It prefixes every class and variable: longer names would push template lines past 100."""
_TOKENS = re.compile(r"abe-mq-example|abe_mq_example|Example|EXAMPLE|example")
_ANY_CASE = re.compile(r"example", re.IGNORECASE)
_SKIPPED_NAMES = frozenset({"__pycache__", "build", "dist"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


@dataclass(frozen=True)
class ProviderNames:
    """Every spelling of a provider's name that the template uses."""

    name: str
    """The entry-point name and QUEUE_BACKEND value: `acme`, `rabbit-mq`."""
    distribution: str
    """`abe-mq-acme`."""
    package: str
    """The import package: `abe_mq_acme`."""
    camel: str
    """The class-name prefix: `Acme` (AcmeBackend), `RabbitMq`."""
    upper: str
    """The environment-variable prefix: `ACME` (ACME_URL, ABE_ACME_*), `RABBIT_MQ`."""

    @classmethod
    def of(cls, name: str) -> ProviderNames:
        """The spellings of `name`, which `check_name` has accepted."""
        parts = name.split("-")
        return cls(
            name=name,
            distribution=f"abe-mq-{name}",
            package=f"abe_mq_{'_'.join(parts)}",
            camel="".join(part.capitalize() for part in parts),
            upper="_".join(parts).upper(),
        )

    def substitute(self, text: str) -> str:
        """`text` with each spelling of the template's name replaced by this name's."""
        forms = {
            "abe-mq-example": self.distribution,
            "abe_mq_example": self.package,
            "Example": self.camel,
            "EXAMPLE": self.upper,
            "example": self.name,
        }
        return _TOKENS.sub(lambda match: forms[match.group()], text)


def check_name(name: str, installed: Iterable[str] = ()) -> ProviderNames:
    """The spellings of `name`, or a usage error saying what a provider name must be."""
    if name.startswith(("abe-mq-", "abe_mq_")):
        raise CommandError(
            f"give the broker's name alone: `abe new-provider {name[7:] or 'NAME'}` creates "
            f"the distribution abe-mq-{name[7:] or 'NAME'}",
            EXIT_USAGE,
        )
    if len(name) > _MAX_LENGTH or _VALID.fullmatch(name) is None:
        raise CommandError(
            f"{name!r} cannot name a provider: use lowercase letters, digits and single '-' "
            f"between them, starting with a letter, at most {_MAX_LENGTH} characters "
            f"(the name of your broker, e.g. 'rabbitmq' or 'azure-servicebus')",
            EXIT_USAGE,
        )
    if name == TEMPLATE_NAME:
        raise CommandError(
            f"{name!r} is the template's own name; name the provider after its broker",
            EXIT_USAGE,
        )
    if name in FIRST_PARTY:
        owner = "abe-core" if name == "memory" else f"abe-mq-{name}"
        raise CommandError(
            f"{name!r} is taken by abe's own {owner}; choose another name for yours "
            f"(QUEUE_BACKEND and the distribution name would collide)",
            EXIT_USAGE,
        )
    if name in installed:
        raise CommandError(
            f"a backend named {name!r} is installed already (`abe backends` lists it); "
            f"choose another name, or uninstall that one first",
            EXIT_USAGE,
        )
    return ProviderNames.of(name)


def template_files(root: Traversable) -> Iterator[tuple[tuple[str, ...], Traversable]]:
    """Each file of the template under `root`, with its path parts; caches and builds skipped."""
    for entry in sorted(root.iterdir(), key=lambda item: item.name):
        name = entry.name
        if name.startswith(".") or name in _SKIPPED_NAMES or name.endswith(_SKIPPED_SUFFIXES):
            continue
        if entry.is_dir():
            for parts, found in template_files(entry):
                yield (name, *parts), found
        elif entry.is_file():
            yield (name,), entry


def _default_template() -> Traversable:
    return files("abe") / "_templates" / "provider"


def render(names: ProviderNames, directory: Path, template: Traversable | None = None) -> Path:
    """Copy the template into `directory`/abe-mq-NAME with `names` substituted; the new folder.

    Nothing is left behind on failure: the copy is written beside the target and
    renamed into place at the end. An existing target is never touched.
    """
    source = _default_template() if template is None else template
    target = directory / names.distribution
    if target.exists():
        raise CommandError(
            f"{target} exists already; remove it or choose another --dir", EXIT_USAGE
        )
    found = list(template_files(source))
    if not any(parts == ("pyproject.toml",) for parts, _ in found):
        raise CommandError(f"the provider template is missing from this abe-core ({source})")
    if not directory.is_dir():
        raise CommandError(
            f"--dir {directory} is not an existing folder; create it first (mkdir -p)",
            EXIT_USAGE,
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{names.distribution}-", dir=directory))
    staging.chmod(0o777 & ~_umask())  # as `mkdir` would make it, not mkdtemp's 0700
    try:
        for parts, file in found:
            _check_spellings("/".join(parts), "the template's file names")
            destination = staging.joinpath(*(names.substitute(part) for part in parts))
            destination.parent.mkdir(parents=True, exist_ok=True)
            data = file.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                destination.write_bytes(data)
                continue
            _check_spellings(text, "/".join(parts))
            destination.write_bytes(names.substitute(text).encode("utf-8"))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    """The process's file-mode creation mask (reading it means setting it, then back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_spellings(text: str, where: str) -> None:
    """Refuse a template file that spells its name in a way rendering would not replace."""
    stripped = _TOKENS.sub("\0", text)  # the tokens hold no newline: line numbers stay
    leftover = _ANY_CASE.search(stripped)
    if leftover is not None:
        line = stripped.count("\n", 0, leftover.start()) + 1
        raise CommandError(
            f"the provider template spells {leftover.group()!r} at {where}:{line}, which "
            f"rendering would leave behind; this is a bug in abe-core's template"
        )


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `abe new-provider`."""
    parser = commands.add_parser(
        "new-provider",
        help="create a provider package for another broker from abe's template",
        description=(
            "Copy abe's provider template into DIR/abe-mq-NAME with its names replaced: "
            "distribution abe-mq-NAME, import package abe_mq_NAME, classes NameBackend and "
            "NameSettings, entry point NAME, variables NAME_* and ABE_NAME_*. The copy "
            "works as it is, on an in-process broker, and passes abe's contract suite; "
            "replace each '# BROKER CALL' in it with your client library's call."
        ),
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        help="the broker's name: up to 20 lowercase letters, digits and '-', e.g. rabbitmq",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="the folder to create abe-mq-NAME in (default: the current folder)",
    )
    return parser


def _python_command() -> str:
    """How to call the Python abe runs on: `python` when that is the one on PATH, else its path.

    `python` keeps the printed steps the same on every machine (the documentation shows
    them and runs them as printed); a path is printed when `python` is another Python.
    """
    on_path = shutil.which("python")
    if on_path is not None:
        here, there = Path(sys.executable), Path(on_path)
        try:  # the same file in the same folder: the same environment, not only the same binary
            if os.path.samefile(here.parent, there.parent) and os.path.samefile(here, there):
                return "python"
        except OSError:
            pass
    return shlex.quote(sys.executable)


def run(args: argparse.Namespace) -> int:
    """Render the template and say what to do next."""
    installed = {entry.name for entry in available_backends()}
    names = check_name(args.name, installed)
    target = render(names, args.dir).resolve()
    shown = shlex.quote(str(target))
    python = _python_command()
    print(
        f"Created {target}\n"
        f"  distribution {names.distribution}, import package {names.package}, classes "
        f"{names.camel}Backend and {names.camel}Settings,\n"
        f"  entry point {names.name!r} (QUEUE_BACKEND={names.name}), variables "
        f"{names.upper}_* and ABE_{names.upper}_*.\n"
        f"\n"
        f"It runs on an in-process broker and passes abe's contract suite as it is (these\n"
        f"use the Python abe runs on, where abe-core is installed already):\n"
        f"  cd {shown}\n"
        f"  {python} -m pip install -e '.[test,lint]'\n"
        f"  {python} -m pytest\n"
        f"\n"
        f"Then replace each '# BROKER CALL' in src/{names.package}/ with your client "
        f"library's call;\n"
        f'README.md ("From template to provider") lists the steps.'
    )
    return EXIT_OK
