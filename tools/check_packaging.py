"""Run inside a fresh venv holding every abe wheel: check they coexist and come apart cleanly.

Usage: python check_packaging.py UV DIST_DIR PACKAGE... (UV: the uv executable used to
uninstall and reinstall; DIST_DIR: where the wheels are). Checks, for every distribution:
release metadata (license, URLs, Python requirement, `Typing :: Typed`, version equal to
the newest CHANGELOG entry), that no installed file belongs to two distributions, and that
uninstalling any one provider (or instrumentation) leaves abe-core and every other provider
working.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

GROUP = "abe.backends.message_queue"
CORE = "abe-core"
REQUIRED_CLASSIFIERS = ("Typing :: Typed", "Programming Language :: Python :: 3 :: Only")
DUMMY_ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}

PROBE = """
import json, sys
from importlib.metadata import entry_points
from abe.backends.message_queue.loader import load_backend
loaded = {}
for point in entry_points(group="abe.backends.message_queue"):
    loaded[point.name] = type(load_backend(point.name)).__name__
print(json.dumps(loaded))
"""


def fail(message: str) -> None:
    sys.exit(f"check_packaging: {message}")


def check_metadata(name: str, changelog: Path) -> str:
    """The distribution's version, after checking the metadata a release needs."""
    meta = importlib.metadata.metadata(name)
    version = meta["Version"]
    if not (meta.get("License-Expression") or meta.get("License")):
        fail(f"{name} declares no license")
    if not meta.get_all("License-File"):
        fail(f"{name} ships no license file")
    urls = meta.get_all("Project-URL") or []
    if not any(url.startswith(("Source", "Homepage")) for url in urls):
        fail(f"{name} has no Source or Homepage URL: {urls}")
    if not meta.get("Requires-Python"):
        fail(f"{name} does not say which Pythons it supports")
    classifiers = meta.get_all("Classifier") or []
    for wanted in REQUIRED_CLASSIFIERS:
        if wanted not in classifiers:
            fail(f"{name} lacks the classifier {wanted!r}")
    if not meta.get("Description") and not meta.get_payload():
        fail(f"{name} has no long description (README)")
    newest = re.search(r"^## (\S+)", changelog.read_text(), re.MULTILINE)
    if newest is None or newest.group(1) != version:
        found = newest.group(1) if newest else "nothing"
        fail(f"{name} {version}: its CHANGELOG's newest entry is {found}")
    return version


def check_no_shared_files(names: list[str]) -> None:
    owners: dict[str, str] = {}
    for name in names:
        for file in importlib.metadata.files(name) or []:
            path = str(file)
            if path.endswith((".pyc", "RECORD", "INSTALLER", "REQUESTED")) or ".." in path:
                continue  # bytecode caches and installer bookkeeping, and console scripts
            other = owners.setdefault(path, name)
            if other != name:
                fail(f"{path} is installed by both {other} and {name}")


def probe() -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, **DUMMY_ENVIRONMENT},
        check=False,
    )
    if done.returncode != 0:
        fail(f"loading the installed backends failed:\n{done.stderr}")
    result: dict[str, str] = json.loads(done.stdout)
    return result


def main(uv: str, dist: Path, packages: list[str], root: Path) -> None:
    versions = {
        name: check_metadata(name, root / "packages" / name / "CHANGELOG.md") for name in packages
    }
    check_no_shared_files(packages)
    everything = probe()
    providers = [name for name in packages if name != CORE]
    print(f"installed together: {versions}; backends {everything}")
    for provider in providers:
        backends = {  # none for an instrumentation
            point.name
            for point in importlib.metadata.distribution(provider).entry_points
            if point.group == GROUP
        }
        subprocess.run([uv, "pip", "uninstall", "--python", sys.executable, provider], check=True)
        left = probe()
        expected = {name: kind for name, kind in everything.items() if name not in backends}
        if left != expected:
            fail(f"after uninstalling {provider}, the backends are {left}, not {expected}")
        wheel = next(dist.glob(f"{provider.replace('-', '_')}-*.whl"))
        subprocess.run(
            [uv, "pip", "install", "--python", sys.executable, "--no-deps", str(wheel)], check=True
        )
        print(f"uninstalling {provider} left {sorted(left)} working")
    if probe() != everything:
        fail("reinstalling the providers did not give back every backend")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:], Path(__file__).resolve().parents[1])
