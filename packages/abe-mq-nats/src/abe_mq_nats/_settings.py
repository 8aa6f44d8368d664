"""NatsSettings: every variable abe-mq-nats reads, declared once and validated all at once."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from abe.backends.message_queue.base.settings import BackendSettings
from abe.settings import COMMON_VARIABLES, Environment, Secret, Variable

__all__ = ["VARIABLES", "NatsSettings"]

BACKEND_NAME = "nats"

URL = Variable(
    "NATS_URL",
    "nats://127.0.0.1:4222",
    "NATS server URL, or several separated by commas (`nats://` or `tls://`); credentials "
    "in it (`nats://token@host` or `nats://user:password@host`) are used and never shown.",
    # Secret because it may carry a token: `abe backends` masks only URL passwords.
    secret=True,
)
TOKEN = Variable("NATS_TOKEN", None, "Token for token authentication.", secret=True)
USER = Variable("NATS_USER", None, "User name for user/password authentication.")
PASSWORD = Variable(
    "NATS_PASSWORD", None, "Password for user/password authentication.", secret=True
)
NKEY_SEED = Variable(
    "NATS_NKEY_SEED",
    None,
    "NKey authentication: the path of a file holding the user's seed, or the seed itself "
    "(`SU...`).",
    secret=True,
)
CREDS = Variable(
    "NATS_CREDS", None, "Path of a credentials file (user JWT and seed) for decentralised auth."
)
TLS_CA = Variable(
    "NATS_TLS_CA", None, "Path of the CA certificate(s) (PEM) that sign the server's certificate."
)
TLS_CERT = Variable(
    "NATS_TLS_CERT",
    None,
    "Path of this client's certificate (PEM), for servers that verify clients.",
)
TLS_KEY = Variable("NATS_TLS_KEY", None, "Path of the private key (PEM) of NATS_TLS_CERT.")
CONNECT_TIMEOUT = Variable(
    "ABE_NATS_CONNECT_TIMEOUT",
    "5",
    "Seconds one connection attempt to one server may take (the whole connect is also "
    "bounded by ABE_MQ_OPERATION_TIMEOUT).",
)
RECONNECT_WAIT = Variable(
    "ABE_NATS_RECONNECT_WAIT",
    "0.5",
    "Seconds between reconnection attempts to a server that went away (abe reconnects "
    "for as long as the backend is open).",
)
STREAM = Variable(
    "ABE_NATS_STREAM",
    None,
    "An existing stream to use for every key its subjects cover; abe never creates or "
    "changes it. Keys it does not cover get a stream of their own.",
)
STORAGE = Variable(
    "ABE_NATS_STORAGE",
    "file",
    "Storage of the streams abe creates: `file` (survives restarts) or `memory`.",
)
RETENTION = Variable(
    "ABE_NATS_RETENTION",
    "limits",
    "Retention of the streams abe creates: `limits` (kept until ABE_NATS_MAX_AGE / "
    "ABE_NATS_MAX_BYTES) or `interest` (dropped once every existing group acknowledged it; "
    "messages published while no group exists are dropped).",
)
REPLICAS = Variable(
    "ABE_NATS_REPLICAS", "1", "Replicas of the streams abe creates (1 to 5; more needs a cluster)."
)
MAX_AGE = Variable(
    "ABE_NATS_MAX_AGE",
    "0",
    "Seconds a message is kept in the streams abe creates; 0 keeps it until other limits apply.",
)
MAX_BYTES = Variable(
    "ABE_NATS_MAX_BYTES",
    "-1",
    "Largest size in bytes of each stream abe creates (oldest messages go first); -1 for none.",
)
DUPLICATE_WINDOW = Variable(
    "ABE_NATS_DUPLICATE_WINDOW",
    "120",
    "Seconds during which a publish with an already-seen message id (`Nats-Msg-Id`) is "
    "not stored again (at most ABE_NATS_MAX_AGE when that is set).",
)

VARIABLES: tuple[Variable, ...] = (
    URL,
    TOKEN,
    USER,
    PASSWORD,
    NKEY_SEED,
    CREDS,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    CONNECT_TIMEOUT,
    RECONNECT_WAIT,
    STREAM,
    STORAGE,
    RETENTION,
    REPLICAS,
    MAX_AGE,
    MAX_BYTES,
    DUPLICATE_WINDOW,
    *COMMON_VARIABLES,
)
"""Every variable `NatsSettings.from_env()` reads, in the order the README lists them."""

_SEED = re.compile(r"S[A-Z][A-Z2-7]{56}")
_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")

Storage = Literal["file", "memory"]
Retention = Literal["limits", "interest"]


@dataclass(frozen=True, kw_only=True)
class NatsSettings(BackendSettings):
    """Where the NATS servers are, how to authenticate, and the streams abe creates.

    `servers` never hold credentials: a token or user/password written in `NATS_URL` is
    moved to `token` / `user` and `password` (secrets show as '***').
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    token: Secret | None = None
    user: str | None = None
    password: Secret | None = None
    nkey_seed: Secret | None = None
    """The NKey seed itself, when NATS_NKEY_SEED holds the seed rather than a path."""
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    stream: str | None = None
    storage: Storage = "file"
    retention: Retention = "limits"
    replicas: int = 1
    max_age: float = 0.0
    max_bytes: int = -1
    duplicate_window: float = 120.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.servers:
            raise ValueError("servers must name at least one NATS server")
        for server in self.servers:
            parts = urlsplit(server)
            if "@" in parts.netloc or parts.query or parts.fragment:
                # A query would be shown wherever servers are, and NATS reads no URL options.
                raise ValueError(
                    "servers must not carry credentials or ?options (scheme://host:port); "
                    "pass token= or user= and password="
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a `tls://` server, or any TLS file given)."""
        return any(server.startswith("tls://") for server in self.servers) or any(
            path is not None for path in (self.tls_ca, self.tls_cert, self.tls_key)
        )

    def credentials(self) -> dict[str, str]:
        """The nats-py `connect()` arguments that authenticate, secrets revealed: pass them on
        to the client and nowhere else."""
        options: dict[str, str] = {}
        if self.token is not None:
            options["token"] = self.token.reveal()
        if self.user is not None and self.password is not None:
            options["user"] = self.user
            options["password"] = self.password.reveal()
        if self.nkey_seed is not None:
            options["nkeys_seed_str"] = self.nkey_seed.reveal()
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        return options

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context these settings describe, or None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None
        )
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context

    @classmethod
    def from_env(cls) -> NatsSettings:
        """Read NATS_*, ABE_NATS_* and the common ABE_MQ_* variables; one error for all problems."""
        env = Environment()
        common = cls.read_common(env)
        servers, url_user, url_password, url_token = _servers(env)
        token = env.secret(TOKEN)
        user = env.string(USER)
        password = env.secret(PASSWORD)
        if url_token is not None or url_user is not None:
            if token is not None or user is not None or password is not None:
                env.problem(
                    URL,
                    "carries credentials and NATS_TOKEN or NATS_USER/NATS_PASSWORD are set "
                    "too; give them once",
                )
            token = url_token if token is None else token
            user = url_user if user is None else user
            password = url_password if password is None else password
        if token is not None and (user is not None or password is not None):
            env.problem(TOKEN, "cannot be used together with NATS_USER/NATS_PASSWORD; choose one")
        if user is not None and password is None:
            env.problem(PASSWORD, "is required when NATS_USER is set")
        if password is not None and user is None:
            env.problem(USER, "is required when NATS_PASSWORD is set")
        nkey_seed, nkey_seed_file = _nkey(env)
        creds_file = env.path(CREDS)
        if creds_file is not None and (nkey_seed is not None or nkey_seed_file is not None):
            env.problem(CREDS, "cannot be used together with NATS_NKEY_SEED; choose one")
        tls_ca = env.path(TLS_CA)
        tls_cert = env.path(TLS_CERT)
        tls_key = env.path(TLS_KEY)
        if env.is_set(TLS_CERT) and not env.is_set(TLS_KEY):
            env.problem(TLS_KEY, "is required when NATS_TLS_CERT is set")
        if env.is_set(TLS_KEY) and not env.is_set(TLS_CERT):
            env.problem(TLS_CERT, "is required when NATS_TLS_KEY is set")
        connect_timeout = env.seconds(CONNECT_TIMEOUT, minimum=0.1, maximum=300)
        reconnect_wait = env.seconds(RECONNECT_WAIT, minimum=0.01, maximum=300)
        stream = env.string(STREAM)
        if stream is not None and _STREAM_NAME.fullmatch(stream) is None:
            env.problem(
                STREAM,
                f"must be a stream name: no spaces, '.', '*', '>', '/' or '\\' (got {stream!r})",
            )
        storage = env.choice(STORAGE, ("file", "memory"))
        retention = env.choice(RETENTION, ("limits", "interest"))
        if env.is_set(RETENTION) and retention is None:
            raw = (env.raw(RETENTION) or "").lower()
            if raw == "workqueue":
                env.problems[RETENTION.name] = (
                    "must be limits or interest (got 'workqueue'): a work-queue stream allows "
                    "one group per subject, and abe groups fan out"
                )
        replicas = env.integer(REPLICAS, minimum=1, maximum=5)
        max_age = env.seconds(MAX_AGE, minimum=0, maximum=10 * 365 * 86400)
        max_bytes = env.integer(MAX_BYTES, minimum=-1, maximum=1 << 62)
        if max_bytes == 0:
            env.problem(MAX_BYTES, "must be -1 (no limit) or a positive number of bytes (got 0)")
        duplicate_window = env.seconds(DUPLICATE_WINDOW, minimum=0.1, maximum=7 * 86400)
        if max_age and duplicate_window and duplicate_window > max_age:
            if env.is_set(DUPLICATE_WINDOW):
                env.problem(
                    DUPLICATE_WINDOW,
                    f"must not exceed ABE_NATS_MAX_AGE ({max_age:g}s): JetStream keeps message "
                    f"ids only as long as the messages (got {duplicate_window:g})",
                )
            else:
                duplicate_window = max_age
        values = {
            "servers": servers,
            "token": token,
            "user": user,
            "password": password,
            "nkey_seed": nkey_seed,
            "nkey_seed_file": nkey_seed_file,
            "creds_file": creds_file,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "connect_timeout": connect_timeout,
            "reconnect_wait": reconnect_wait,
            "stream": stream,
            "storage": storage,
            "retention": retention,
            "replicas": replicas,
            "max_age": max_age,
            "max_bytes": max_bytes,
            "duplicate_window": duplicate_window,
        }
        settings_values = {name: value for name, value in values.items() if value is not None}
        if not env.problems and (tls_ca or tls_cert or tls_key):
            try:
                cls(**common, **settings_values).tls_context()  # type: ignore[arg-type]
            except (ssl.SSLError, OSError, ValueError) as exc:
                blamed = TLS_CERT if tls_cert is not None else TLS_CA
                env.problem(blamed, f"could not be loaded as PEM ({type(exc).__name__}: {exc})")
        env.check(BACKEND_NAME)
        return cls(**common, **settings_values)  # type: ignore[arg-type]


def _servers(
    env: Environment,
) -> tuple[tuple[str, ...] | None, str | None, Secret | None, Secret | None]:
    """The server URLs without credentials, and the credentials they carried."""
    text = env.url(URL, schemes=("nats", "tls"))
    if text is None:
        return None, None, None, None
    servers: list[str] = []
    found: set[tuple[str | None, str | None]] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        parsed = urlsplit(part)
        if not parsed.hostname:
            env.problem(URL, "each URL needs a host, e.g. nats://127.0.0.1:4222")
            return None, None, None, None
        host = parsed.hostname
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        servers.append(f"{parsed.scheme}://{host}:{parsed.port or 4222}")
        if parsed.username is not None or parsed.password is not None:
            found.add(
                (
                    unquote(parsed.username) if parsed.username is not None else None,
                    unquote(parsed.password) if parsed.password is not None else None,
                )
            )
    if not servers:
        env.problem(URL, "names no server; e.g. nats://127.0.0.1:4222")
        return None, None, None, None
    if len(found) > 1:
        env.problem(URL, "its servers carry different credentials; give them once")
        return tuple(servers), None, None, None
    if not found:
        return tuple(servers), None, None, None
    name, secret = found.pop()
    if secret is None:  # nats://token@host
        return tuple(servers), None, None, Secret(name or "")
    return tuple(servers), name, Secret(secret), None


def _nkey(env: Environment) -> tuple[Secret | None, Path | None]:
    """NATS_NKEY_SEED as a seed value or as the path of a seed file."""
    text = env.raw(NKEY_SEED)
    if text is None:
        return None, None
    if _SEED.fullmatch(text):
        return Secret(text), None
    path = Path(text).expanduser()
    if path.is_file():
        return None, path
    env.problem(
        NKEY_SEED,
        "must be the path of a readable seed file or an NKey seed (58 characters starting "
        "with 'SU'); the value is not shown",
    )
    return None, None
