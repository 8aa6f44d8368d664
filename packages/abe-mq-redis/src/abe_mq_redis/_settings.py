"""RedisSettings: each variable declared once; REDIS_URL checked as redis-py would read it."""

from __future__ import annotations

import functools
import math
import re
import ssl
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import SplitResult, parse_qs, parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, Connection, parse_url

from abe.provider import (
    BackendSettings,
    Secret,
    SecretFilter,
    redact_url,
    setting,
    split_url_credentials,
)

__all__ = ["RedisSettings", "url_problem"]


@dataclass(frozen=True, kw_only=True)
class RedisSettings(BackendSettings):
    """How to reach Redis and use its streams; credentials in `url` move to username/password."""

    url: str = setting(
        "REDIS_URL",
        "redis://localhost:6379/0",
        "Where Redis is: redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket.",
    )
    username: str | None = setting(
        "REDIS_USERNAME", None, "ACL user name; overrides a user name in REDIS_URL."
    )
    password: Secret | None = setting(
        "REDIS_PASSWORD",
        None,
        "Password (of the ACL user, or of `requirepass`); overrides one in REDIS_URL. Never shown.",
        secret=True,
    )
    tls_ca_file: Path | None = setting(
        "REDIS_TLS_CA_FILE",
        None,
        "PEM file of the CA that signed the server certificate (rediss:// only; default: the "
        "system's trusted CAs).",
    )
    tls_cert_file: Path | None = setting(
        "REDIS_TLS_CERT_FILE",
        None,
        "PEM client certificate, for servers that require one (rediss:// only; needs the key).",
        pair="tls_key_file",
    )
    tls_key_file: Path | None = setting(
        "REDIS_TLS_KEY_FILE",
        None,
        "PEM private key of the client certificate (if encrypted: ?ssl_password= in REDIS_URL).",
    )
    pool_size: int = setting(
        "ABE_REDIS_POOL_SIZE",
        100,
        "Most connections publishing and acknowledging use at once (more calls wait for one); "
        "each subscription also keeps one for its blocking reads.",
        minimum=1,
        maximum=10_000,
    )
    poll_interval: float = setting(
        "ABE_REDIS_BLOCK_TIME",
        1.0,
        "Longest one XREADGROUP BLOCK waits, in seconds (shorter when redelivery work is due).",
        minimum=0.01,
        maximum=300,
    )
    maxlen: int | None = setting(
        "ABE_REDIS_MAXLEN",
        None,
        "Trim each stream to about this many entries on publish (XADD MAXLEN ~). Unset: never "
        "trim, since trimming drops entries nobody has read yet.",
        minimum=1,
    )
    max_payload_bytes: int = setting(
        "ABE_REDIS_MAX_PAYLOAD_BYTES",
        1_048_576,
        "Largest JSON body accepted, in bytes.",
        minimum=1,
        maximum=512 * 1024 * 1024,
    )
    cluster: str = setting(
        "ABE_REDIS_CLUSTER",
        "auto",
        "Redis Cluster: `auto` asks the server in REDIS_URL on first use (INFO cluster), `yes` "
        "or `no` say it; in a cluster, REDIS_URL names any node (redis:// or rediss://, db 0).",
        choices=("auto", "yes", "no"),
    )
    wait_replicas: int = setting(
        "ABE_REDIS_WAIT_REPLICAS",
        0,
        "After each publish, WAIT until this many replicas have it (at most half the operation "
        "timeout); fewer: BackendUnavailableError. 0: confirmed once the primary has it.",
        minimum=0,
        maximum=100,
    )
    consumer_idle_timeout: float = setting(
        "ABE_REDIS_CONSUMER_IDLE_TIMEOUT",
        3600.0,
        "Seconds after which a group's consumer that is idle and owns no pending entry is deleted.",
        minimum=1,
    )

    backend_name: ClassVar[str] = "redis"

    def __post_init__(self) -> None:
        if url_problem(self.url) is None:  # a bad URL stays as given, for check() to name
            clean, user, password = split_url_credentials(self.url)
            object.__setattr__(self, "url", clean)
            self.fill_unset(username=user or None, password=Secret(password) if password else None)
        super().__post_init__()

    def check(self) -> Iterator[tuple[str, str]]:
        """The URL as redis-py reads it; TLS files only with rediss://, certificate with key."""
        problem = url_problem(self.url)
        if problem is not None:
            yield "url", problem
            return
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if getattr(self, name) is not None and not self.tls:
                yield name, _NOT_TLS
        cert, key = self.tls_cert_file, self.tls_key_file
        if self.tls and cert is not None and key is not None and cert.is_file() and key.is_file():
            yield from self._client_pair_problem(cert, key)
        unix = self.url.startswith("unix:")
        if self.cluster == "yes" and (unix or parse_url(self.url).get("db")):
            yield "cluster", "is yes, but a cluster is reached by redis:// or rediss://, db 0"

    def _client_pair_problem(self, cert: Path, key: Path) -> Iterator[tuple[str, str]]:
        """A client certificate and key that do not load; never an OpenSSL password prompt."""
        password = parse_qs(urlsplit(self.url).query).get("ssl_password", [""])[0]
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=password)
        except (ssl.SSLError, OSError) as exc:
            problem = f"does not load with REDIS_TLS_KEY_FILE ({type(exc).__name__}: {exc}): "
            problem += "check that the key is its key and, for an encrypted key, write its "
            yield "tls_cert_file", problem + "password in REDIS_URL as ?ssl_password=..."

    def secrets(self) -> tuple[str, ...]:
        """The password and a secret query option of the URL (`ssl_password`), for scrubbing."""
        options = parse_qs(urlsplit(self.url).query)
        return (*super().secrets(), *options.get("ssl_password", ()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.describe().items())
        return f"{type(self).__name__}({shown})"

    def describe(self) -> dict[str, object]:
        """Fields for display; the URL's query is normalised first: `ssl%5Fpassword` is hidden."""
        base, mark, query = self.url.partition("#")[0].partition("?")
        if query:
            query = urlencode(parse_qsl(query, keep_blank_values=True), safe="/:,")
        return {**super().describe(), "url": redact_url(base + mark + query)}

    @property
    def address(self) -> str:
        """The URL without its query options: where the server is, for reprs and errors."""
        return redact_url(self.url.partition("#")[0].partition("?")[0])

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a rediss:// URL)."""
        return self.url.startswith("rediss://")


_URL_OPTIONS = (frozenset(URL_QUERY_ARGUMENT_PARSERS) - {"timeout"}) | {
    *("client_name", "lib_name", "lib_version", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path"),
    *("ssl_cert_reqs", "ssl_certfile", "ssl_ciphers", "ssl_keyfile", "ssl_password"),
}
"""The query options redis-py converts or uses as text: any other (`decode_responses=1`) would
reach it as text it does not expect; the legacy `timeout` is no connection option at all."""
_AT_LEAST = {"db": 0, "health_check_interval": 0, "max_connections": 1, "socket_read_size": 1}
_CERT_REQS = ("none", "optional", "required")
_NOT_TLS = "is set, but REDIS_URL does not use TLS: write rediss:// for TLS, or unset this variable"
_HIDDEN = "the value is not shown, since it may hold a password"
_VERSION = f"redis-py {redis.__version__}"


@functools.lru_cache(maxsize=64)
def url_problem(url: str) -> str | None:
    """What redis-py would refuse or misread in a URL (no I/O, no secret repeated), or None."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in ("redis", "rediss", "unix"):
        shown = f" (got {redact_url(scheme + separator)!r})" if separator else ""
        return f"must start with redis://, rediss:// or unix:// (in lower case){shown}"
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        return (
            f"contains a space or a control character ({_HIDDEN}): percent-encode it, e.g. a "
            "space as %20"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        if "IPv6" not in str(exc):
            return f"is not a valid URL ({_HIDDEN})"
        return (
            f"is not a valid URL: a '[' without its ']' ({_HIDDEN}); write an IPv6 address in "
            "brackets, e.g. redis://[::1]:6379/0"
        )
    options = parse_qs(parts.query)
    return (
        _place_problem(parts, scheme, options)
        or _names_problem(scheme, options)
        or _values_problem(url, options)
    )


def _place_problem(parts: SplitResult, scheme: str, options: dict[str, list[str]]) -> str | None:
    """Credentials outside the user-info part, the port, the socket path or the database."""
    if "@" in parts.path + parts.query + parts.fragment:
        return (
            f"has an '@' after the host ({_HIDDEN}): percent-encode '/', '?', '#' and '@' in the "
            "user name and password (e.g. '/' as %2F), or give them in REDIS_USERNAME and "
            "REDIS_PASSWORD"
        )
    if "password" in options or "username" in options:
        return (
            "has a password or username query option (the value is not shown): give them in "
            "REDIS_USERNAME and REDIS_PASSWORD, or as redis://user:password@host"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "is not a valid URL: its port must be a number from 1 to 65535"
    if scheme == "unix" and not parts.path:
        return "must name the socket's path, e.g. unix:///run/redis.sock"
    if scheme != "unix" and not re.fullmatch("/?[0-9]*", unquote(parts.path)):
        return (
            "has a path that is not a database number: write the database as a number after "
            "the port, e.g. redis://cache:6379/2 (or leave it out for database 0)"
        )
    return None


def _names_problem(scheme: str, options: dict[str, list[str]]) -> str | None:
    """An option redis-py does not take from a URL, a TLS option without TLS, a repeat."""
    for name, values in options.items():
        if not re.fullmatch("[a-z][a-z0-9_]{0,39}", name):
            return "has a query option whose name is not one redis-py takes from a URL"
        if name not in _URL_OPTIONS:
            takes = ", ".join(sorted(_URL_OPTIONS - {"username", "password"}))
            why = f"which abe does not pass on to {_VERSION}; it takes: {takes}"
            return f"has the query option {name!r}, {why}"
        if name.startswith("ssl_") and scheme != "rediss":
            return f"has the TLS option {name!r}: use rediss:// for TLS, or remove the option"
        if len(values) > 1:
            return f"gives the query option {name!r} {len(values)} times; give it once"
    return None


def _values_problem(url: str, options: dict[str, list[str]]) -> str | None:
    """A value redis-py cannot read, or would take for something it does not mean."""
    secrets = [value for values in options.values() for value in values]
    scrub = SecretFilter([*secrets, split_url_credentials(url)[2] or ""]).scrub  # "" is skipped
    try:
        kwargs: dict[str, object] = dict(parse_url(url))
    except ValueError as exc:
        return f"is not a URL redis-py accepts: {scrub(str(exc))}"
    for name, value in kwargs.items():
        if isinstance(value, bool) or name not in options:
            continue
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            return f"has {name}={value!r}; it must be a positive number of seconds"
        if isinstance(value, int) and value < _AT_LEAST.get(name, value):
            return f"has {name}={value}; it must be at least {_AT_LEAST[name]}"
    cert_reqs = options.get("ssl_cert_reqs", ["required"])[0]
    if cert_reqs not in _CERT_REQS:
        return f"has ssl_cert_reqs that is not one of {', '.join(_CERT_REQS)}"
    if cert_reqs == "none" and kwargs.get("ssl_check_hostname"):
        return (
            "has ssl_cert_reqs=none with ssl_check_hostname=true: a host name can only be "
            "checked on a certificate that is checked; remove one of the two"
        )
    return _connection_problem(kwargs, scrub)


def _connection_problem(kwargs: dict[str, object], scrub: Callable[[str], str]) -> str | None:
    """What redis-py says when it builds a connection object from the options (no I/O)."""
    connection_class = kwargs.pop("connection_class", Connection)
    kwargs.pop("max_connections", None)  # the pool's, not the connection's
    assert isinstance(connection_class, type)
    try:
        with warnings.catch_warnings():  # redis-py 8 deprecates lib_name: it says so later
            warnings.simplefilter("ignore", DeprecationWarning)
            connection_class(**kwargs)
    except Exception as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if isinstance(exc, TypeError) and unknown:
            return f"has the query option {unknown.group(1)!r}, which {_VERSION} does not know"
        return f"has query options {_VERSION} cannot use: {scrub(str(exc))}"
    return None
