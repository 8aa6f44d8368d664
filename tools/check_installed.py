"""Run inside a fresh venv holding one wheel (and abe-core): import it and resolve its backends.

An instrumentation (opentelemetry-instrumentation-*) has no backend: its one entry point,
in `opentelemetry_instrumentor`, must load and install and remove its middleware.

Usage: python check_installed.py DISTRIBUTION. Exits non-zero with the reason on any failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

from abe.backends.message_queue.loader import load_backend, load_backend_class
from abe.middleware import installed

GROUP = "abe.backends.message_queue"
INSTRUMENTOR_GROUP = "opentelemetry_instrumentor"
INSTRUMENTATION_PREFIX = "opentelemetry-instrumentation-"
DUMMY_ENVIRONMENT = {  # enough for every provider's from_env(); nothing connects
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


def main(distribution: str) -> None:
    dist = importlib.metadata.distribution(distribution)
    module_name = "abe" if distribution == "abe-core" else distribution.replace("-", "_")
    if distribution.startswith(INSTRUMENTATION_PREFIX):
        name = distribution.removeprefix(INSTRUMENTATION_PREFIX).replace("-", "_")
        module_name = f"opentelemetry.instrumentation.{name}"
    module = importlib.import_module(module_name)
    origin = Path(module.__file__ or "")
    if "site-packages" not in str(origin):
        sys.exit(f"{module_name} was imported from {origin}, not from the installed wheel")
    if not (origin.parent / "py.typed").is_file():
        sys.exit(f"{distribution}: the wheel lacks py.typed")
    if distribution.startswith(INSTRUMENTATION_PREFIX):
        check_instrumentation(dist)
        return
    points = [point for point in dist.entry_points if point.group == GROUP]
    groups = {point.group for point in dist.entry_points} - {"console_scripts"}
    if distribution != "abe-core" and (len(points) != 1 or groups != {GROUP}):
        sys.exit(f"{distribution} must declare exactly one entry point, in {GROUP}: {points}")
    os.environ.pop("QUEUE_BACKEND", None)
    for name, value in DUMMY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for point in points:
        backend_class = load_backend_class(point.name)
        if backend_class is not point.load():
            sys.exit(f"load_backend_class({point.name!r}) did not give {point.value}")
        backend = load_backend(point.name)
        print(f"{distribution} {dist.version}: {point.name!r} -> {backend!r}")


def check_instrumentation(dist: importlib.metadata.Distribution) -> None:
    """Its one entry point loads an instrumentor that installs one middleware, then none."""
    points = [point for point in dist.entry_points if point.group == INSTRUMENTOR_GROUP]
    groups = {point.group for point in dist.entry_points}
    if len(points) != 1 or groups != {INSTRUMENTOR_GROUP}:
        sys.exit(f"{dist.name} must declare exactly one entry point, in {INSTRUMENTOR_GROUP}")
    instrumentor = points[0].load()()
    instrumentor.instrument()
    if len(installed()) != 1:
        sys.exit(f"{points[0].value}().instrument() installed {installed()}, not one middleware")
    instrumentor.uninstrument()
    if installed():
        sys.exit(f"{points[0].value}().uninstrument() left {installed()} installed")
    print(f"{dist.name} {dist.version}: {points[0].name!r} -> {points[0].value}")


if __name__ == "__main__":
    main(sys.argv[1])
