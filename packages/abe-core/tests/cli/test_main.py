"""The `abe` entry point: help, version, exit codes, and errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import abe
from abe.cli import main
from abe.cli.errors import EXIT_FAILURE, EXIT_USAGE, CommandError, exit_code_for, one_line
from abe.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: abe")
    for command in ("backends", "check", "publish", "consume", "demo", "bench"):
        assert command in out


def test_version_is_abe_cores(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"abe-core {abe.__version__}"


def test_python_dash_m_abe_runs_the_command(memory_env: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "abe", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"abe-core {abe.__version__}"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == EXIT_USAGE
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--messages", "0"],
        ["bench", "--batch-size", "many"],
        ["consume", "orders", "--timeout", "-1"],
        ["check", "--timeout", "nan"],
        ["demo", "--orders", "1"],
        ["publish", "orders"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err


def test_an_unexpected_error_is_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode() -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr("abe.cli.backends.available_backends", explode)
    assert main(["backends"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "abe backends: unexpected RuntimeError: boom (rerun with --debug for the traceback)"
    ]


def test_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode() -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr("abe.cli.backends.available_backends", explode)
    assert main(["backends", "--debug"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: boom" in err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PayloadError("x"), EXIT_USAGE),
        (InvalidKeyError("x"), EXIT_USAGE),
        (ConfigurationError("memory", {"ABE_MQ_PREFETCH": "bad"}), EXIT_USAGE),
        (BackendNotFoundError("x"), EXIT_USAGE),
        (BackendUnavailableError("x"), EXIT_FAILURE),
        (CommandError("x", EXIT_USAGE), EXIT_USAGE),
        (OSError("x"), EXIT_FAILURE),
        (RuntimeError("x"), EXIT_FAILURE),
    ],
)
def test_exit_codes(error: Exception, code: int) -> None:
    assert exit_code_for(error) == code


def test_a_configuration_error_is_said_on_one_line() -> None:
    error = ConfigurationError("redis", {"REDIS_URL": "is required", "ABE_MQ_PREFETCH": "bad"})
    text = one_line(error)
    assert "\n" not in text
    assert "REDIS_URL: is required; ABE_MQ_PREFETCH: bad" in text
    assert "abe backends" in text
