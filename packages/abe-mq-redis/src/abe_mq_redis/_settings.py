"""RedisSettings and the environment variables it is read from, each declared once."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, Connection, parse_url

from abe.backends.message_queue.base.settings import BackendSettings
from abe.redaction import SecretFilter, redact_url
from abe.settings import COMMON_VARIABLES, Environment, Secret, Variable

__all__ = [
    "BLOCK_TIME",
    "CONSUMER_IDLE_TIMEOUT",
    "MAXLEN",
    "MAX_PAYLOAD",
    "PASSWORD",
    "POOL_SIZE",
    "TLS_CA_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "URL",
    "USERNAME",
    "VARIABLES",
    "RedisSettings",
    "shown_url",
    "split_credentials",
    "url_problem",
]

DEFAULT_URL = "redis://localhost:6379/0"
SCHEMES = ("redis", "rediss", "unix")

URL = Variable(
    "REDIS_URL",
    DEFAULT_URL,
    "Where Redis is: redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket.",
)
USERNAME = Variable("REDIS_USERNAME", None, "ACL user name; overrides a user name in REDIS_URL.")
PASSWORD = Variable(
    "REDIS_PASSWORD",
    None,
    "Password (of the ACL user, or of `requirepass`); overrides one in REDIS_URL. Never shown.",
    secret=True,
)
TLS_CA_FILE = Variable(
    "REDIS_TLS_CA_FILE",
    None,
    "PEM file of the CA that signed the server certificate (rediss:// only; default: the "
    "system's trusted CAs).",
)
TLS_CERT_FILE = Variable(
    "REDIS_TLS_CERT_FILE",
    None,
    "PEM client certificate, for servers that require one (rediss:// only; needs the key).",
)
TLS_KEY_FILE = Variable(
    "REDIS_TLS_KEY_FILE", None, "PEM private key of the client certificate (unencrypted)."
)
POOL_SIZE = Variable(
    "ABE_REDIS_POOL_SIZE",
    "100",
    "Most connections publishing and acknowledging use at once (more calls wait for one); "
    "each subscription also keeps one for its blocking reads.",
)
BLOCK_TIME = Variable(
    "ABE_REDIS_BLOCK_TIME",
    "1",
    "Longest one XREADGROUP BLOCK waits, in seconds (shorter when redelivery work is due).",
)
MAXLEN = Variable(
    "ABE_REDIS_MAXLEN",
    None,
    "Trim each stream to about this many entries on publish (XADD MAXLEN ~). Unset: never "
    "trim, since trimming drops entries nobody has read yet.",
)
MAX_PAYLOAD = Variable(
    "ABE_REDIS_MAX_PAYLOAD_BYTES", "1048576", "Largest JSON body accepted, in bytes."
)
CONSUMER_IDLE_TIMEOUT = Variable(
    "ABE_REDIS_CONSUMER_IDLE_TIMEOUT",
    "3600",
    "Seconds after which a group's consumer that is idle and owns no pending entry is deleted.",
)

VARIABLES: tuple[Variable, ...] = (
    URL,
    USERNAME,
    PASSWORD,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    POOL_SIZE,
    BLOCK_TIME,
    MAXLEN,
    MAX_PAYLOAD,
    CONSUMER_IDLE_TIMEOUT,
    *COMMON_VARIABLES,
)
"""Every variable `RedisBackend.from_env()` reads, in the order the README lists them."""


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without its user name and password, and the two (percent-decoded) apart."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo = parts.netloc.rpartition("@")[0]
    user, has_password, password = userinfo.partition(":")
    start = url.index("//") + 2  # the user-info follows the scheme's "//"
    clean = url[:start] + url[start + len(userinfo) + 1 :]
    return (
        clean,
        unquote(user) or None,
        unquote(password) if has_password and password else None,
    )


def shown_url(url: str) -> str:
    """`url` for display: user info and secret query options (`ssl_password`...) as ***.

    The query is decoded and encoded again first, so that a percent-encoded option name
    (`ssl%5Fpassword`) or a `;` inside a value cannot slip past `redact_url`.
    """
    base, mark, query = url.partition("#")[0].partition("?")
    if query:
        query = urlencode(parse_qsl(query, keep_blank_values=True), safe="/:,")
    return redact_url(base + mark + query)


@dataclass(frozen=True, kw_only=True)
class RedisSettings(BackendSettings):
    """How to reach Redis and how to use its streams; `from_env()` reads them all at once.

    `url` never holds credentials: a user name or password written in it is moved to
    `username` / `password` (the password as a `Secret`, which never shows in a repr).
    `poll_interval` is the longest a blocking read waits (`ABE_REDIS_BLOCK_TIME`).
    """

    url: str = DEFAULT_URL
    username: str | None = None
    password: Secret | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    pool_size: int = 100
    maxlen: int | None = None
    max_payload_bytes: int = 1_048_576
    consumer_idle_timeout: float = 3600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = url_problem(self.url)
        if problem is not None:
            raise ValueError(f"url {problem}")
        clean, user, password = split_credentials(self.url)
        if clean != self.url:
            object.__setattr__(self, "url", clean)
            if self.username is None and user is not None:
                object.__setattr__(self, "username", user)
            if self.password is None and password is not None:
                object.__setattr__(self, "password", Secret(password))
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {self.pool_size}")
        if self.maxlen is not None and self.maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 (or None), got {self.maxlen}")
        if self.max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be at least 1, got {self.max_payload_bytes}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.describe().items())
        return f"{type(self).__name__}({shown})"

    def describe(self) -> dict[str, object]:
        """Field names and values for display: the URL without secret query options."""
        described = super().describe()
        described["url"] = shown_url(self.url)
        return described

    @property
    def address(self) -> str:
        """The URL without its query options: where the server is, for reprs and errors."""
        return redact_url(self.url.partition("#")[0].partition("?")[0])

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a rediss:// URL)."""
        return self.url.startswith("rediss://")

    @classmethod
    def from_env(cls, environ: Environment | None = None) -> RedisSettings:
        """Read REDIS_*, ABE_REDIS_* and the common ABE_MQ_* variables; one error names all."""
        env = environ or Environment()
        common = cls.read_common(env)
        problem = url_problem(env.raw(URL) or DEFAULT_URL)
        if problem is not None:  # recorded first: nothing after it repeats the value
            env.problem(URL, problem)
        url = env.url(URL, schemes=SCHEMES) if problem is None else None
        clean, url_user, url_password = split_credentials(url or DEFAULT_URL)
        username = env.string(USERNAME) or url_user
        password = env.secret(PASSWORD) or (Secret(url_password) if url_password else None)
        ca_file = env.path(TLS_CA_FILE)
        cert_file = env.path(TLS_CERT_FILE)
        key_file = env.path(TLS_KEY_FILE)
        tls_given = [v for v in (TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE) if env.is_set(v)]
        if tls_given and url is not None and not clean.startswith("rediss://"):
            for variable in tls_given:
                env.problem(
                    variable,
                    "is set, but REDIS_URL does not use TLS: write rediss:// instead of "
                    "redis:// to connect with TLS, or unset this variable",
                )
        if env.is_set(TLS_CERT_FILE) and not env.is_set(TLS_KEY_FILE):
            env.problem(TLS_KEY_FILE, "is required when REDIS_TLS_CERT_FILE is set")
        if env.is_set(TLS_KEY_FILE) and not env.is_set(TLS_CERT_FILE):
            env.problem(TLS_CERT_FILE, "is required when REDIS_TLS_KEY_FILE is set")
        pool_size = env.integer(POOL_SIZE, minimum=1, maximum=10_000)
        block_time = env.seconds(BLOCK_TIME, minimum=0.01, maximum=300)
        maxlen = env.integer(MAXLEN, minimum=1)
        max_payload = env.integer(MAX_PAYLOAD, minimum=1, maximum=512 * 1024 * 1024)
        idle_timeout = env.seconds(CONSUMER_IDLE_TIMEOUT, minimum=1)
        env.check("redis")
        return cls(
            **common,
            url=clean,
            username=username,
            password=password,
            tls_ca_file=ca_file,
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            pool_size=pool_size or 100,
            poll_interval=block_time or 1.0,
            maxlen=maxlen,
            max_payload_bytes=max_payload or 1_048_576,
            consumer_idle_timeout=idle_timeout or 3600.0,
        )


_TEXT_OPTIONS = frozenset(
    {
        "client_name",
        "lib_name",
        "lib_version",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_ciphers",
        "ssl_keyfile",
        "ssl_password",
    }
)
"""Query options whose value redis-py uses as text; the others it converts itself."""
_URL_OPTIONS = (frozenset(URL_QUERY_ARGUMENT_PARSERS) - {"timeout"}) | _TEXT_OPTIONS
"""Every query option abe passes on to this redis-py (anything else, even a valid keyword
argument such as `decode_responses=1`, would reach it as text it does not expect; the
legacy `timeout` is no connection option at all)."""
_AT_LEAST = {"db": 0, "health_check_interval": 0, "max_connections": 1, "socket_read_size": 1}
"""Smallest value of the integer options; numbers of seconds must be positive and finite."""
_CERT_REQS = ("none", "optional", "required")
_DB_PATH = re.compile(r"/?[0-9]*")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, in words that never repeat a secret; None if nothing.

    Everything redis-py would refuse (or misread) later is found here, without any I/O:
    the scheme, brackets, the port, the database, each query option and its value.
    """
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in SCHEMES:
        shown = f" (got {redact_url(scheme + separator)!r})" if separator else ""
        return f"must start with redis://, rediss:// or unix:// (in lower case){shown}"
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        return (
            "contains a space or a control character (the value is not shown, since it may "
            "hold a password): percent-encode it, e.g. a space as %20"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        if "IPv6" in str(exc):
            return (
                "is not a valid URL: a '[' without its ']' (the value is not shown, since it "
                "may hold a password); write an IPv6 address in brackets, e.g. "
                "redis://[::1]:6379/0"
            )
        return "is not a valid URL (the value is not shown, since it may hold a password)"
    if "@" in parts.path + parts.query + parts.fragment:
        return (
            "has an '@' after the host (the value is not shown, since it may hold a password): "
            "percent-encode '/', '?', '#' and '@' in the user name and password (e.g. '/' as "
            "%2F), or give them in REDIS_USERNAME and REDIS_PASSWORD"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    options = parse_qs(parts.query)
    if "password" in options or "username" in options:
        return (
            "has a password or username query option (the value is not shown): give them in "
            "REDIS_USERNAME and REDIS_PASSWORD, or as redis://user:password@host"
        )
    if port == 0:
        return "is not a valid URL: its port must be a number from 1 to 65535"
    if scheme == "unix" and not parts.path:
        return "must name the socket's path, e.g. unix:///run/redis.sock"
    if scheme != "unix" and not _DB_PATH.fullmatch(unquote(parts.path)):
        return (
            "has a path that is not a database number: write the database as a number "
            "after the port, e.g. redis://cache:6379/2 (or leave it out for database 0)"
        )
    return _options_problem(url, scheme, options)


def _options_problem(url: str, scheme: str, options: dict[str, list[str]]) -> str | None:
    """What is wrong with the query options, checked against the installed redis-py."""
    version = f"redis-py {redis.__version__}"
    for name, values in options.items():
        if not _OPTION_NAME.fullmatch(name):
            return "has a query option whose name is not one redis-py takes from a URL"
        if name not in _URL_OPTIONS:
            return (
                f"has the query option {name!r}, which abe does not pass on to {version}; it "
                f"takes: {', '.join(sorted(_URL_OPTIONS - {'username', 'password'}))}"
            )
        if name.startswith("ssl_") and scheme != "rediss":
            return f"has the TLS option {name!r}: use rediss:// for TLS, or remove the option"
        if len(values) > 1:
            return f"gives the query option {name!r} {len(values)} times; give it once"
    password = split_credentials(url)[2]
    secrets = [value for values in options.values() for value in values]
    scrub = SecretFilter([*secrets, password] if password else secrets).scrub
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
    if options.get("ssl_cert_reqs", ["required"])[0] not in _CERT_REQS:
        return f"has ssl_cert_reqs that is not one of {', '.join(_CERT_REQS)}"
    if options.get("ssl_cert_reqs") == ["none"] and kwargs.get("ssl_check_hostname"):
        return (
            "has ssl_cert_reqs=none with ssl_check_hostname=true: a host name can only be "
            "checked on a certificate that is checked; remove one of the two"
        )
    connection_class = kwargs.pop("connection_class", Connection)
    kwargs.pop("max_connections", None)  # the pool's, not the connection's
    assert isinstance(connection_class, type)
    try:
        with warnings.catch_warnings():  # redis-py 8 deprecates lib_name: it says so later
            warnings.simplefilter("ignore", DeprecationWarning)
            connection_class(**kwargs)  # builds the connection object only: no I/O
    except TypeError as exc:
        unknown = _UNEXPECTED.search(str(exc))
        if unknown:
            return f"has the query option {unknown.group(1)!r}, which {version} does not know"
        return f"has query options {version} cannot use: {scrub(str(exc))}"
    except Exception as exc:
        return f"has query options {version} cannot use: {scrub(str(exc))}"
    return None
