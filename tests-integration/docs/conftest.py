"""Fixtures for running documentation pages: wheels built from this checkout, a reader's home.

Pytest runs with ``--import-mode=importlib``, which does not put test folders on
``sys.path``, so this file adds its own folder for ``page_runner`` and ``reader``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from reader import Reader, build_wheels, reader_env  # noqa: E402


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a wheel of every package, freshly built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    try:
        build_wheels(out)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return out


@pytest.fixture
def reader(tmp_path: Path, wheels: Path) -> Reader:
    """A new HOME with `~/abe` in it, laid out as a clone after `nox -s build`: dist/ has wheels."""
    home = tmp_path / "home"
    clone = home / "abe"
    shutil.copytree(wheels, clone / "dist")
    return Reader(home, clone, reader_env(home))
