"""NatsSettings: every variable abe-mq-nats reads, declared once (abe-core reads and checks them).
`parse=` helpers return marked values (URL credentials, a seed file) `__post_init__` spreads."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from abe.provider import BackendSettings, Secret, setting, split_url_credentials

__all__ = ["NatsSettings"]

_SEED = re.compile(r"S[A-Z][A-Z2-7]{56}")
_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")
_WINDOW = 120.0  # the default duplicate window; by identity: only one left unset follows MAX_AGE
_CLASH = "carries credentials and NATS_TOKEN or NATS_USER/NATS_PASSWORD are set too; give them once"
_NOT_PLAIN = "must not carry credentials or ?options (scheme://host:port); pass token= or user= "
_NOT_PLAIN += "and password="
_STREAM_RULE = "no spaces, '.', '*', '>', '/' or '\\'"
_IDS = "JetStream keeps message ids only as long as the messages"
_WORK_QUEUE = "must be limits or interest: a work-queue stream allows one group per subject, and "
_WORK_QUEUE += "abe groups fan out"


class _Servers(tuple[str, ...]):
    """NATS_URL's servers (without credentials) and the credentials the URL carried."""

    credentials: dict[str, object]


def _servers(text: str) -> tuple[str, ...]:
    """NATS_URL as `scheme://host:port` servers; credentials in it are kept aside (`_Servers`)."""
    servers: list[str] = []
    found: set[tuple[str, str | None]] = set()
    for part in text.split(","):
        try:
            parsed = urlsplit(part.strip())
            port = parsed.port or 4222
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
            raise ValueError("must be nats:// or tls:// URLs with a host: nats://127.0.0.1:4222")
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        servers.append(f"{parsed.scheme}://{host}:{port}")
        _, name, password = split_url_credentials(part.strip())
        if name is not None:
            found.add((name, password))
    if len(found) > 1:
        raise ValueError("its servers carry different credentials; give them once")
    if not found:
        return tuple(servers)
    result, (name, password) = _Servers(servers), found.pop()
    result.credentials = {"token": Secret(name)}  # nats://token@host
    if password is not None:  # nats://user:password@host
        result.credentials = {"user": name, "password": Secret(password)}
    return result


def _seed(text: str) -> Secret | Path:
    """An NKey seed, or the path of a file holding one."""
    if _SEED.fullmatch(text):
        return Secret(text)
    if (path := Path(text).expanduser()).is_file():
        return path
    raise ValueError("must be an NKey seed (SU...) or a readable seed file; the value is not shown")


def _retention(text: str) -> str:
    """The retention, lower-cased (`choices` refuses others), or why not a work queue."""
    if text.lower() == "workqueue":
        raise ValueError(_WORK_QUEUE)
    return text.lower()


@dataclass(frozen=True, kw_only=True)
class NatsSettings(BackendSettings):
    """Where the NATS servers are, how to authenticate, and the streams abe creates; credentials
    written in NATS_URL move to `token` or `user`/`password` (secrets show as '***')."""

    servers: tuple[str, ...] = setting(
        "NATS_URL",
        ("nats://127.0.0.1:4222",),
        "NATS server URL, or several separated by commas (`nats://` or `tls://`); credentials "
        "in it (`nats://token@host` or `nats://user:password@host`) are used and never shown.",
        secret=True,  # it may carry a token: `abe backends` masks only URL passwords
        parse=_servers,
    )
    token: Secret | None = setting(
        "NATS_TOKEN", None, "Token for token authentication.", secret=True
    )
    user: str | None = setting(
        "NATS_USER", None, "User name for user/password authentication.", pair="password"
    )
    password: Secret | None = setting(
        "NATS_PASSWORD", None, "Password for user/password authentication.", secret=True
    )
    nkey_seed: Secret | None = setting(
        "NATS_NKEY_SEED",
        None,
        "NKey authentication: the user's seed (`SU...`), or the path of a file holding it.",
        secret=True,
        parse=_seed,
    )
    nkey_seed_file: Path | None = setting(None, None, "The seed file NATS_NKEY_SEED names.")
    creds_file: Path | None = setting(
        "NATS_CREDS", None, "Path of a credentials file (user JWT and seed) for decentralised auth."
    )
    tls_ca: Path | None = setting(
        "NATS_TLS_CA", None, "Path of the CA certificates (PEM) that sign the server's certificate."
    )
    tls_cert: Path | None = setting(
        "NATS_TLS_CERT",
        None,
        "Path of the client's certificate (PEM), for mutual TLS.",
        pair="tls_key",
    )
    tls_key: Path | None = setting(
        "NATS_TLS_KEY", None, "Path of the private key (PEM) of NATS_TLS_CERT."
    )
    tls_key_password: Secret | None = setting(
        "NATS_TLS_KEY_PASSWORD",
        None,
        "Password of NATS_TLS_KEY (if encrypted); never shown.",
        secret=True,
    )
    connect_timeout: float = setting(
        "ABE_NATS_CONNECT_TIMEOUT",
        5.0,
        "Seconds one connection attempt to a server may take (within ABE_MQ_OPERATION_TIMEOUT).",
        minimum=0.1,
        maximum=300,
    )
    reconnect_wait: float = setting(
        "ABE_NATS_RECONNECT_WAIT",
        0.5,
        "Seconds between attempts to reconnect to a server (for as long as the backend is open).",
        minimum=0.01,
        maximum=300,
    )
    stream: str | None = setting(
        "ABE_NATS_STREAM",
        None,
        "An existing stream to use for every key its subjects cover; abe never creates or "
        "changes it. Keys it does not cover get a stream of their own.",
    )
    storage: Literal["file", "memory"] = setting(
        "ABE_NATS_STORAGE",
        "file",
        "Storage of the streams abe creates: `file` (survives restarts) or `memory`.",
        choices=("file", "memory"),
    )
    retention: Literal["limits", "interest"] = setting(
        "ABE_NATS_RETENTION",
        "limits",
        "Retention of the streams abe creates: `limits` (kept until ABE_NATS_MAX_AGE / MAX_BYTES) "
        "or `interest` (dropped once every group there is acknowledged it: at once, if none).",
        choices=("limits", "interest"),
        parse=_retention,
    )
    replicas: int = setting(
        "ABE_NATS_REPLICAS",
        1,
        "Replicas of the streams abe creates (1 to 5; more needs a cluster).",
        minimum=1,
        maximum=5,
    )
    max_age: float = setting(
        "ABE_NATS_MAX_AGE",
        0.0,
        "Seconds a message is kept in the streams abe creates; 0: until other limits apply.",
        minimum=0,
        maximum=10 * 365 * 86400,
    )
    max_bytes: int = setting(
        "ABE_NATS_MAX_BYTES",
        -1,
        "Largest size in bytes of each stream abe creates (oldest messages go first); -1 for none.",
        minimum=-1,
        maximum=1 << 62,
    )
    duplicate_window: float = setting(
        "ABE_NATS_DUPLICATE_WINDOW",
        _WINDOW,
        "Seconds during which a publish with an already-seen message id (`Nats-Msg-Id`) is "
        "not stored again (at most ABE_NATS_MAX_AGE when that is set).",
        minimum=0.1,
        maximum=7 * 86400,
    )

    backend_name: ClassVar[str] = "nats"

    def __post_init__(self) -> None:
        seed: object = self.nkey_seed
        if isinstance(seed, Path):  # NATS_NKEY_SEED named a seed file
            object.__setattr__(self, "nkey_seed_file", seed)
            object.__setattr__(self, "nkey_seed", None)
        if isinstance(self.servers, _Servers):  # NATS_URL carried credentials
            given = (self.token, self.user, self.password) != (None, None, None)
            self.fill_unset(**self.servers.credentials)
            if not given:  # else check() reports the clash
                object.__setattr__(self, "servers", tuple(self.servers))
        if self.max_age and self.duplicate_window is _WINDOW:
            object.__setattr__(self, "duplicate_window", min(self.max_age, _WINDOW))
        super().__post_init__()

    def check(self) -> Iterator[tuple[str, str]]:
        """The rules between fields (abe-core names the variable of each field it blames)."""
        if isinstance(self.servers, _Servers):
            yield "servers", _CLASH
        if not self.servers:
            yield "servers", "must name at least one NATS server"
        if any("@" in p.netloc or p.query or p.fragment for p in map(urlsplit, self.servers)):
            yield "servers", _NOT_PLAIN  # they are shown, and NATS reads no ?options
        if self.token is not None and (self.user is not None or self.password is not None):
            yield "token", "cannot be used together with NATS_USER/NATS_PASSWORD; choose one"
        if self.creds_file is not None and (self.nkey_seed or self.nkey_seed_file):
            yield "creds_file", "cannot be used together with NATS_NKEY_SEED; choose one"
        if self.tls_key_password is not None and self.tls_key is None:
            yield "tls_key_password", "is set but NATS_TLS_KEY is not; unset it, or give the key"
        yield from self._tls_problems()
        if self.stream is not None and _STREAM_NAME.fullmatch(self.stream) is None:
            yield "stream", f"must be a stream name: {_STREAM_RULE} (got {self.stream!r})"
        if self.max_bytes == 0:
            yield "max_bytes", "must be -1 (no limit) or a positive number of bytes (got 0)"
        if self.max_age and (window := self.duplicate_window) > (age := self.max_age):
            problem = f"must not exceed ABE_NATS_MAX_AGE ({age:g}s): {_IDS} (got {window:g})"
            yield "duplicate_window", problem

    def _tls_problems(self) -> Iterator[tuple[str, str]]:
        """TLS files that do not load as PEM (core checks that they exist and are paired)."""
        files = (self.tls_ca, self.tls_cert, self.tls_key)
        if all(path is None or path.is_file() for path in files) and (self.tls_ca or self.tls_cert):
            try:
                self.tls_context()
            except (ssl.SSLError, OSError, ValueError) as exc:
                blamed = "tls_cert" if self.tls_cert is not None else "tls_ca"
                problem = f"could not be loaded as PEM ({type(exc).__name__}: {exc})"
                if blamed == "tls_cert":
                    problem += ": check that NATS_TLS_KEY is its key and, for an encrypted key, "
                    problem += "that NATS_TLS_KEY_PASSWORD is its password"
                yield blamed, problem

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a `tls://` server, or any TLS file given)."""
        files = (self.tls_ca, self.tls_cert, self.tls_key)
        return any(server.startswith("tls://") for server in self.servers) or any(files)

    def credentials(self) -> dict[str, str]:
        """nats-py's `connect()` arguments that authenticate, secrets revealed: for it alone."""
        secrets = {"token": self.token, "password": self.password, "nkeys_seed_str": self.nkey_seed}
        paths = {"nkeys_seed": self.nkey_seed_file, "user_credentials": self.creds_file}
        options = {name: value.reveal() for name, value in secrets.items() if value is not None}
        options.update({name: str(path) for name, path in paths.items() if path is not None})
        return options | ({"user": self.user} if self.user is not None else {})

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context these settings describe, or None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None
        )
        if self.tls_cert is not None and self.tls_key is not None:
            password = self.tls_key_password
            # Never None: OpenSSL would prompt on the terminal for an encrypted key's password.
            secret = password.reveal() if password is not None else str
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key), password=secret)
        return context
