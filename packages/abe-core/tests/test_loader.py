"""The loader, exercised through real installed distributions, one isolated interpreter per case.

Each test distribution under tests/distributions/ is installed with pip into a folder
of its own, as is abe-core itself. A case runs `python -S` with only the folders it
names on its path, so what is installed in the developer's environment cannot leak in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CORE = HERE.parent
DISTRIBUTIONS = ("alpha", "beta", "broken", "impostor")

PROBE = r"""
import json, sys, warnings
from abe.backends.message_queue.loader import available_backends, load_backend
name = sys.argv[1] or None
result = {"available": [[e.name, e.distribution, e.version] for e in available_backends()]}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        backend = load_backend(name)
        result["loaded"] = type(backend).__name__
    except Exception as exc:
        result["error"] = type(exc).__name__
        result["message"] = str(exc)
        result["cause"] = type(exc.__cause__).__name__ if exc.__cause__ else None
result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
print(json.dumps(result))
"""


def _pip_install(source: Path, target: Path) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    command += ["--no-build-isolation", "--target", str(target), str(source)]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, f"installing {source.name} failed:\n{finished.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """abe-core and each test distribution, each installed by pip into its own folder."""
    root = tmp_path_factory.mktemp("installed")
    folders = {"core": root / "core"}
    _pip_install(CORE, folders["core"])
    for name in DISTRIBUTIONS:
        folders[name] = root / name
        _pip_install(HERE / "distributions" / f"abe-test-{name}", folders[name])
    return folders


def run_case(
    installed: dict[str, Path],
    providers: list[str],
    name: str = "",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """load_backend(name) in an interpreter that sees abe-core and `providers` only."""
    path = os.pathsep.join(str(installed[folder]) for folder in ["core", *providers])
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path, **(env or {})}
    finished = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, name],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    result: dict[str, Any] = json.loads(finished.stdout)
    return result


def test_nothing_installed_falls_back_to_memory_with_a_warning(installed: dict[str, Path]) -> None:
    result = run_case(installed, [])
    assert result["loaded"] == "MemoryBackend"
    assert [entry[0] for entry in result["available"]] == ["memory"]
    assert result["available"][0][1] == "abe-core"
    [warning] = result["warnings"]
    assert warning.startswith("MemoryFallbackWarning")
    assert "pip install abe-mq-redis" in warning


def test_the_only_installed_provider_is_chosen(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha"])
    assert result["loaded"] == "AlphaBackend"
    assert result["warnings"] == []
    assert ["alpha", "abe-test-alpha", "1.2.3"] in result["available"]


def test_several_installed_and_none_chosen_lists_them(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha", "beta"])
    assert result["error"] == "BackendNotFoundError"
    message = result["message"]
    assert "alpha (abe-test-alpha 1.2.3)" in message
    assert "beta (abe-test-beta 0.4.0)" in message
    assert "QUEUE_BACKEND" in message


def test_queue_backend_chooses_among_several(installed: dict[str, Path]) -> None:
    assert run_case(installed, ["alpha", "beta"], env={"QUEUE_BACKEND": "beta"})["loaded"] == (
        "BetaBackend"
    )
    assert run_case(installed, ["alpha", "beta"], env={"QUEUE_BACKEND": "memory"})["loaded"] == (
        "MemoryBackend"
    )


def test_the_argument_wins_over_the_environment(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha", "beta"], name=" Alpha ", env={"QUEUE_BACKEND": "beta"})
    assert result["loaded"] == "AlphaBackend"


def test_unknown_name_lists_installed_and_the_install_command(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha"], name="kafka")
    assert result["error"] == "BackendNotFoundError"
    assert "no message-queue backend named 'kafka'" in result["message"]
    assert "alpha (abe-test-alpha 1.2.3)" in result["message"]
    assert "memory (abe-core" in result["message"]
    assert "pip install abe-mq-kafka" in result["message"]


def test_a_misspelt_name_suggests_the_close_one(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha"], env={"QUEUE_BACKEND": "alpah"})
    assert "Did you mean 'alpha'?" in result["message"]


def test_a_provider_that_fails_to_import_names_its_distribution(
    installed: dict[str, Path],
) -> None:
    result = run_case(installed, ["broken"], name="broken")
    assert result["error"] == "BackendNotFoundError"
    assert result["cause"] == "ModuleNotFoundError"
    message = result["message"]
    assert "abe-test-broken 0.0.1" in message
    assert "abe_client_library_that_is_not_installed" in message
    assert "pip install --force-reinstall abe-test-broken" in message
    # Listing does not import it, so a broken provider never breaks the others:
    assert ["broken", "abe-test-broken", "0.0.1"] in result["available"]
    assert run_case(installed, ["broken", "alpha"], name="alpha")["loaded"] == "AlphaBackend"


def test_an_entry_point_that_is_not_a_backend_is_refused(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["impostor"], name="impostor")
    assert result["error"] == "BackendNotFoundError"
    assert "abe-test-impostor 9.9.9" in result["message"]
    assert "lacks consume, from_env" in result["message"]


def test_one_name_from_two_distributions_is_refused(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha", "impostor"], name="alpha")
    assert result["error"] == "BackendNotFoundError"
    assert "abe-test-alpha 1.2.3" in result["message"]
    assert "abe-test-impostor 9.9.9" in result["message"]
    assert "uninstall all but one" in result["message"]


def test_configuration_errors_pass_through_unwrapped(installed: dict[str, Path]) -> None:
    result = run_case(installed, ["alpha"], env={"ABE_MQ_PREFETCH": "-3"})
    assert result["error"] == "ConfigurationError"
    assert "ABE_MQ_PREFETCH" in result["message"]
