"""The settings, each declared once: `from_env()`, `abe backends` and the README read them.

Use your broker's conventional names (`<BROKER>_URL`), `ABE_EXAMPLE_*` for abe's knobs,
and `secret=True` on anything a person must not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from abe.provider import BackendSettings, Secret, setting

__all__ = ["ExampleSettings"]


def _url(text: str) -> str:
    """The broker's URL, refused when another scheme or when it carries credentials."""
    parts = urlsplit(text)
    if parts.scheme != "example":
        raise ValueError("must start with example://")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials; use EXAMPLE_TOKEN")
    _ = parts.port  # a port that is not a number raises ValueError
    return text


@dataclass(frozen=True, kw_only=True)
class ExampleSettings(BackendSettings):
    """Where the broker is and how to authenticate (the common settings: BackendSettings)."""

    url: str = setting(
        "EXAMPLE_URL",
        "example://localhost:7000",
        "Where the broker is. Out of the box the broker runs inside this process and the URL "
        "only names it: backends built with the same URL share messages.",
        parse=_url,
    )
    token: Secret | None = setting(
        "EXAMPLE_TOKEN",
        None,
        "Token the client authenticates with (the in-process broker needs none).",
        secret=True,
    )

    backend_name: ClassVar[str] = "example"
