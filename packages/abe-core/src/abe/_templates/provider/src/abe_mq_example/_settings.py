"""The settings: every variable the backend reads, declared once and checked all at once.

The same `Variable` declarations feed `from_env()`, `abe backends` and the README's
table (tests/test_settings.py holds the README to them). Add your broker's variables
here: its conventional names where it has them (e.g. `<BROKER>_URL`), `ABE_EXAMPLE_*`
for abe's own knobs, and `secret=True` on anything a person must not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from abe.backends.message_queue.base.settings import BackendSettings
from abe.settings import COMMON_VARIABLES, Environment, Secret, Variable

__all__ = ["NAME", "TOKEN", "URL", "VARIABLES", "ExampleSettings"]

NAME = "example"
"""The entry-point name, which QUEUE_BACKEND and load_backend() choose the backend by."""

URL = Variable(
    "EXAMPLE_URL",
    "example://localhost:7000",
    "Where the broker is. Out of the box the broker runs inside this process and the URL "
    "only names it: backends built with the same URL share messages.",
)
TOKEN = Variable(
    "EXAMPLE_TOKEN",
    None,
    "Token the client authenticates with (the in-process broker needs none).",
    secret=True,
)
VARIABLES: tuple[Variable, ...] = (URL, TOKEN, *COMMON_VARIABLES)
"""Every variable `from_env()` reads, in the order the README lists them."""


@dataclass(frozen=True, kw_only=True)
class ExampleSettings(BackendSettings):
    """Where the broker is and how to authenticate; the common settings come from BackendSettings.

    `url` never carries credentials (it is shown in reprs and errors); the token is a
    `Secret`, shown as '***' everywhere.
    """

    url: str = "example://localhost:7000"
    token: Secret | None = None

    @classmethod
    def from_env(cls) -> ExampleSettings:
        """Read the variables; one ConfigurationError names every problem.

        Reads only the environment: it never connects, so it is cheap and safe to call.
        """
        env = Environment()
        common = cls.read_common(env)
        url = env.url(URL, schemes=(NAME,))
        if url is not None and "@" in urlsplit(url).netloc:
            env.problem(
                URL, f"must not carry credentials (it is shown in errors); set {TOKEN.name} instead"
            )
        token = env.secret(TOKEN)
        env.check(NAME)
        return cls(**common, url=url or cls.url, token=token)
