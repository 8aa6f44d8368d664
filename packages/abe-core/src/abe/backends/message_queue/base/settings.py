"""Backend settings declared once per field: variable, type, default, limits, secret, meaning.

A provider's settings class is a frozen dataclass whose fields are made with `setting()`.
From those declarations alone, `from_env()` reads every variable (parsed by the field's
type), checks every limit and every cross-field rule, and raises one ConfigurationError
naming each bad variable; a hand-built instance is held to the same limits and rules;
`variables()` lists the variables for `abe backends` and the docs.

    @dataclass(frozen=True, kw_only=True)
    class RedisSettings(BackendSettings):
        url: str = setting("REDIS_URL", "redis://localhost:6379/0", "Where Redis is.",
                           parse=parse_url)
        password: Secret | None = setting("REDIS_PASSWORD", None, "Password.", secret=True)
        pool_size: int = setting("ABE_REDIS_POOL_SIZE", 100, "Connections.", minimum=1)
        cert: Path | None = setting("REDIS_TLS_CERT_FILE", None, "Certificate.", pair="key")
        key: Path | None = setting("REDIS_TLS_KEY_FILE", None, "Its private key.")

        def check(self) -> Iterator[tuple[str, str]]:   # other cross-field rules, optional
            if self.cert and not self.url.startswith("rediss://"):
                yield "cert", "needs a rediss:// REDIS_URL"

Types read from the environment: str, int, float (seconds), bool, Path (a file, checked to
be readable with the other rules), Secret (never echoed), tuple[str, ...] (comma-separated),
each optionally `| None`; anything else through `parse=`. Why not pydantic-settings: abe-core
has no runtime dependency, and this is the small part of it abe needs.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from abe.redaction import redact_url, url_secrets
from abe.settings import Environment, Secret, Variable, number_text

if typing.TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BackendSettings",
    "Setting",
    "SettingsError",
    "Url",
    "common_setting",
    "setting",
    "split_url_credentials",
]

_SETTING = "abe.setting"


@dataclass(frozen=True)
class Setting:
    """How one settings field is read and checked; made by `setting()`."""

    variable: str | None
    meaning: str
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    """Text to value for types the reader does not know; ValueError("must be ...") refuses."""
    url: bool = False
    """The value is URLs: shown with `redact_url`, its credentials counted as secrets."""
    pair: str | None = None
    """The field given with this one, or neither (a certificate and its key)."""


class Url(str):
    """Comma-separated URLs that show with their credentials and secret options as ***.

    A settings field declared `url=True` holds one, so `repr(settings)` never shows a
    password written in a URL, while the client library gets the whole text.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(str(self)))


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without its user-info, and the user name and password written there, for
    settings that move them to fields of their own: percent-decoded, None when not written
    (no '@'; for the password, no ':'). urlsplit's ValueError for a bad URL passes through."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo = parts.netloc.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    start = url.index("//") + 2  # the user-info follows the scheme's "//"
    clean = url[:start] + url[start + len(userinfo) + 1 :]
    return clean, unquote(user), unquote(password) if colon else None


def setting(
    variable: str | None,
    default: Any,
    meaning: str,
    *,
    secret: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    parse: Callable[[str], Any] | None = None,
    url: bool = False,
    pair: str | None = None,
) -> Any:
    """A settings field read from `variable` (None: not read from the environment).

    `minimum`/`maximum` bound numbers, `choices` lists the accepted words (matched without
    regard to case), `secret` keeps the value out of every message and display, `url`
    shows the value through `redact_url` and counts the secrets in it, `pair` names the field
    that must be given with this one (the half that is missing is blamed).
    """
    spec = Setting(variable, meaning, secret, minimum, maximum, choices, parse, url, pair)
    return field(default=default, metadata={_SETTING: spec})


def common_setting(name: str, default: Any, why: str) -> Any:
    """One of `BackendSettings`' fields with a provider's own default: the same variable and
    bounds, and `why` added to its meaning, so `abe backends` and the README say why."""
    common = next(item for item in fields(BackendSettings) if item.name == name)
    spec = common.metadata[_SETTING]
    meaning = f"{spec.meaning.rstrip('.')} ({why})."
    return field(default=default, metadata={_SETTING: replace(spec, meaning=meaning)})


class SettingsError(ValueError):
    """Settings that break a limit or a rule; `problems` maps each field to why."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{name} {reason}" for name, reason in self.problems.items()))


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """How much a consumer may hold, when unfinished work comes back, how long calls may take."""

    prefetch: int = setting(
        "ABE_MQ_PREFETCH",
        100,
        "Most messages a consumer holds unacknowledged at once.",
        minimum=1,
        maximum=100_000,
    )
    redelivery_timeout: float = setting(
        "ABE_MQ_REDELIVERY_TIMEOUT",
        30.0,
        "Seconds after which a delivered but unacknowledged message is delivered again.",
        minimum=0.01,
        maximum=43_200,
    )
    operation_timeout: float = setting(
        "ABE_MQ_OPERATION_TIMEOUT",
        10.0,
        "Seconds a publish or acknowledgement may take before BackendUnavailableError.",
        minimum=0.1,
        maximum=3_600,
    )
    poll_interval: float = setting(
        None,
        1.0,
        "Longest a single fetch blocks before it returns empty (close interrupts it anyway).",
        minimum=0.001,
        maximum=3_600,
    )

    backend_name: ClassVar[str] = "abe"
    """The backend these settings are for, as ConfigurationError names it."""

    def __post_init__(self) -> None:
        for item, spec in self.declared():
            value = getattr(self, item.name)
            if spec.url and isinstance(value, str) and not isinstance(value, Url):
                object.__setattr__(self, item.name, Url(value))
        problems = dict(_limit_problems(self))
        for name, reason in (*self.check(), *_declared_rule_problems(self)):
            problems.setdefault(name, reason)
        if problems:
            raise SettingsError(problems)

    def check(self) -> Iterator[tuple[str, str]]:
        """Cross-field rules: yield (field name, what is wrong) for each one broken."""
        return iter(())

    def fill_unset(self, **values: Any) -> None:
        """Give each named field that is None its value here (None values are skipped): for
        `__post_init__`, where credentials found in a URL yield to those set on their own."""
        for name, value in values.items():
            if getattr(self, name) is None and value is not None:
                object.__setattr__(self, name, value)

    @classmethod
    def declared(cls) -> Iterator[tuple[Field[Any], Setting]]:
        """Every field made with `setting()`, the provider's own first, then the common ones."""
        common = {item.name: item.metadata[_SETTING] for item in fields(BackendSettings)}
        items = [
            (item, item.metadata[_SETTING]) for item in fields(cls) if _SETTING in item.metadata
        ]
        yield from (pair for pair in items if pair[0].name not in common)
        yield from (pair for pair in items if common.get(pair[0].name, pair[1]) != pair[1])
        yield from (pair for pair in items if common.get(pair[0].name) == pair[1])

    @classmethod
    def variables(cls) -> tuple[Variable, ...]:
        """The environment variables `from_env()` reads, for `abe backends` and the docs."""
        return tuple(
            Variable(spec.variable, _default_text(item), spec.meaning, spec.secret)
            for item, spec in cls.declared()
            if spec.variable is not None
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read every declared variable; one ConfigurationError names each one that is wrong."""
        env = Environment(environ)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        variable_of: dict[str, str] = {}
        for item, spec in cls.declared():
            if spec.variable is None:
                continue
            variable_of[item.name] = spec.variable
            value = _read(env, spec, hints[item.name])
            if value is not _UNSET:
                values[item.name] = value
        try:
            settings = cls(**values)
        except SettingsError as exc:
            for name, reason in exc.problems.items():
                env.problem(variable_of.get(name, name), reason)
            settings = None
        env.check(cls.backend_name)
        assert settings is not None
        return settings

    def describe(self) -> dict[str, object]:
        """Field names and values for display: secrets as '***', URLs without credentials."""
        shown: dict[str, object] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            shown[item.name] = redact_url(value) if isinstance(value, Url) else value
        return shown

    def secrets(self) -> tuple[str, ...]:
        """Every secret this configuration holds, revealed, for scrubbing logs and errors."""
        found: list[str] = []
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Secret) and value:
                found.append(value.reveal())
            elif isinstance(value, Url):
                found += url_secrets(value)
        return tuple(found)


_UNSET: Any = object()


def _read(env: Environment, spec: Setting, hint: Any) -> Any:
    """The variable's value parsed by the field's type; _UNSET when unset (or refused)."""
    assert spec.variable is not None
    variable = Variable(spec.variable, None, spec.meaning, spec.secret)
    kind = _base_type(hint)
    if not env.is_set(variable):
        return _UNSET
    if spec.parse is not None:
        value = env.parsed(variable, spec.parse)
    elif spec.choices:
        value = env.choice(variable, spec.choices)
    elif kind is bool:
        value = env.boolean(variable)
    elif kind is int:
        value = env.integer(variable, minimum=_int(spec.minimum), maximum=_int(spec.maximum))
    elif kind is float:
        value = env.seconds(variable, minimum=spec.minimum, maximum=spec.maximum)
    elif kind is Path:  # checked with the instance, so the other half of a pair is blamed too
        value = Path(text).expanduser() if (text := env.string(variable)) else None
    elif kind is Secret:
        value = env.secret(variable)
    elif kind is tuple:
        text = env.string(variable) or ""
        value = tuple(part.strip() for part in text.split(",") if part.strip())
    else:
        value = env.string(variable)
    return _UNSET if value is None else value


def _limit_problems(settings: BackendSettings) -> Iterator[tuple[str, str]]:
    """Each declared limit the instance breaks, worded as the environment reader words it."""
    for item, spec in type(settings).declared():
        value = getattr(settings, item.name)
        if spec.choices and value is not None and value not in spec.choices:
            yield item.name, f"must be one of {', '.join(spec.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = spec.minimum, spec.maximum
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            yield item.name, f"must be a number{_bounds(low, high)}, got {value!r}"


def _declared_rule_problems(settings: BackendSettings) -> Iterator[tuple[str, str]]:
    """Half of a declared pair given without the other; a file that is not there to read."""
    declared = list(type(settings).declared())
    variables = {item.name: spec.variable or item.name for item, spec in declared}
    for item, spec in declared:
        value = getattr(settings, item.name)
        if spec.pair is not None and (value is None) != (getattr(settings, spec.pair) is None):
            given, missing = (item.name, spec.pair) if value is not None else (spec.pair, item.name)
            yield missing, f"is required when {variables[given]} is set (they go together)"
        if isinstance(value, Path) and not value.is_file():
            yield item.name, f"must name a readable file that exists (got {str(value)!r})"
        elif isinstance(value, Path) and not os.access(value, os.R_OK):
            yield item.name, f"must name a file this process can read (got {str(value)!r})"


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {number_text(low)} to {number_text(high)}"
    if low is not None:
        return f" of at least {number_text(low)}"
    if high is not None:
        return f" of at most {number_text(high)}"
    return ""


def _base_type(hint: Any) -> Any:
    """`int` for `int | None`, `tuple` for `tuple[str, ...]`, the type itself otherwise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else hint
    return origin or hint


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def _default_text(item: Field[Any]) -> str | None:
    """The default as a person would write it in the environment; None when there is none."""
    value = item.default
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    if isinstance(value, float):
        return number_text(value)
    return str(value)
