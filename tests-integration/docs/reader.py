"""A reader's machine for running pages: wheels built from this checkout, a new HOME, their env."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAGE_HOME", "ROOT", "Reader", "build_wheels", "reader_env"]

ROOT = Path(__file__).resolve().parents[2]
PAGE_HOME = "/home/you"
"""The home folder the pages show; a run's own HOME stands in for it."""
_PROVIDER_VARIABLES = ("ABE_", "QUEUE_BACKEND", "REDIS_", "NATS_", "KAFKA_", "AWS_", "RABBITMQ_")


@dataclass(frozen=True)
class Reader:
    """Where a page runs: a new HOME, a clone-like folder in it with dist/, their environment."""

    home: Path
    clone: Path
    env: dict[str, str]

    def replacements(self) -> list[tuple[str, str]]:
        """(page text, run text): the page's /home/you is this run's HOME."""
        return [(PAGE_HOME, str(self.home))]


def build_wheels(out: Path) -> None:
    """A wheel of every package under packages/ into `out`, with uv; RuntimeError on failure."""
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("building the wheels needs uv: pip install uv")
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        built = subprocess.run(
            [uv, "build", "--quiet", "--wheel", "--out-dir", str(out), str(pyproject.parent)],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode:
            raise RuntimeError(f"uv build {pyproject.parent} failed:\n{built.stderr}")


def reader_env(home: Path) -> dict[str, str]:
    """This process's environment as a reader's terminal has it: no venv, no broker settings.

    The test's own virtualenv leaves PATH, so `python3` is the machine's, as a reader's is.
    PYTHONUNBUFFERED=1 makes a program's stdout and stderr lines come in the order a
    terminal shows them. PIP_REQUIRE_VIRTUALENV=1: a page that installs outside a
    virtualenv fails, rather than change this machine's Python. pip keeps its usual
    download cache (PIP_CACHE_DIR) although HOME is new, so the pages' installs run as
    written without fetching every wheel again.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PROVIDER_VARIABLES)
    }
    venv = env.pop("VIRTUAL_ENV", None) or (sys.prefix if sys.prefix != sys.base_prefix else None)
    if venv is not None:
        bin_dir = str(Path(venv) / "bin")
        path = env.get("PATH", "").split(os.pathsep)
        env["PATH"] = os.pathsep.join(folder for folder in path if folder != bin_dir)
    env.pop("PYTHONPATH", None)
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PIP_REQUIRE_VIRTUALENV="1")
    return env
