"""Running the `abe` command against a test broker, as a user would: a child process."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["OWN_KEY_PREFIXES", "run_abe"]

OWN_KEY_PREFIXES = ("abe-check-", "abe-demo-", "abe-bench-")
"""How the keys `abe check`, `abe demo` and `abe bench` make for themselves begin."""

_PROVIDER_VARIABLES = ("ABE_", "QUEUE_BACKEND", "REDIS_", "NATS_", "KAFKA_", "AWS_", "RABBITMQ_")


def run_abe(backend: str, env: dict[str, str], *arguments: str, timeout: float = 240) -> str:
    """`python -m abe ARGUMENTS` on `backend` with only `env` configuring it; its output.

    Fails the test, showing the output, when the command exits other than 0.
    """
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PROVIDER_VARIABLES)
    }
    clean.update(env, QUEUE_BACKEND=backend, NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "abe", *arguments],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"abe {' '.join(arguments)} failed:\n{output}"
    return output
