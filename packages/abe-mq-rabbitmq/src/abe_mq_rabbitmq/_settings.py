"""The settings, each declared once: `from_env()`, `abe backends` and the README read them.

Use your broker's conventional names (`<BROKER>_URL`), `ABE_RABBITMQ_*` for abe's knobs,
and `secret=True` on anything a person must not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from abe.provider import BackendSettings, Secret, setting

__all__ = ["RabbitmqSettings"]


def _url(text: str) -> str:
    """The broker's URL, refused when another scheme or when it carries credentials."""
    parts = urlsplit(text)
    if parts.scheme != "rabbitmq":
        raise ValueError("must start with rabbitmq://")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials; use RABBITMQ_TOKEN")
    _ = parts.port  # a port that is not a number raises ValueError
    return text


@dataclass(frozen=True, kw_only=True)
class RabbitmqSettings(BackendSettings):
    """Where the broker is and how to authenticate (the common settings: BackendSettings)."""

    url: str = setting(
        "RABBITMQ_URL",
        "rabbitmq://localhost:7000",
        "Where the broker is. Out of the box the broker runs inside this process and the URL "
        "only names it: backends built with the same URL share messages.",
        parse=_url,
    )
    token: Secret | None = setting(
        "RABBITMQ_TOKEN",
        None,
        "Token the client authenticates with (the in-process broker needs none).",
        secret=True,
    )

    backend_name: ClassVar[str] = "rabbitmq"
