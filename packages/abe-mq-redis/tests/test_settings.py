"""RedisSettings and from_env(): every variable checked at once, secrets never shown."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path
from typing import NoReturn

import pytest
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import RedisSSLContext, SSLConnection

from abe.errors import ConfigurationError
from abe.settings import Secret
from abe_mq_redis import RedisBackend, RedisSettings
from abe_mq_redis._client import connection_kwargs
from abe_mq_redis._settings import url_problem

SECRET = "p@ss:w/rd-Never-Shown"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in RedisBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.delenv("QUEUE_BACKEND", raising=False)

    def no_network(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("reading settings opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)


PKI = Path(__file__).parent / "pki"  # a throwaway certificate and its key, loaded by checks


def test_defaults() -> None:
    settings = RedisSettings.from_env()
    assert settings.url == "redis://localhost:6379/0"
    assert settings.username is None
    assert settings.password is None
    assert settings.pool_size == 100
    assert settings.poll_interval == 1.0
    assert settings.maxlen is None
    assert settings.max_payload_bytes == 1_048_576
    assert settings.redelivery_timeout == 30.0
    assert settings.operation_timeout == 10.0
    assert settings.consumer_idle_timeout == 3600.0
    assert not settings.tls
    assert RedisSettings() == settings


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.pem", PKI / "client.pem", PKI / "client-key.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # read by redis-py only when it connects
    environ = {
        "REDIS_URL": "rediss://cache.internal:6380/3",
        "REDIS_USERNAME": "worker",
        "REDIS_PASSWORD": SECRET,
        "REDIS_TLS_CA_FILE": str(ca),
        "REDIS_TLS_CERT_FILE": str(cert),
        "REDIS_TLS_KEY_FILE": str(key),
        "ABE_REDIS_POOL_SIZE": "7",
        "ABE_REDIS_BLOCK_TIME": "2.5",
        "ABE_REDIS_MAXLEN": "100000",
        "ABE_REDIS_MAX_PAYLOAD_BYTES": "2048",
        "ABE_REDIS_CONSUMER_IDLE_TIMEOUT": "60",
        "ABE_MQ_PREFETCH": "12",
        "ABE_MQ_REDELIVERY_TIMEOUT": "4.5",
        "ABE_MQ_OPERATION_TIMEOUT": "3",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = RedisSettings.from_env()
    assert settings.url == "rediss://cache.internal:6380/3"
    assert settings.tls
    assert settings.username == "worker"
    assert settings.password == Secret(SECRET)
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (ca, cert, key)
    assert settings.pool_size == 7
    assert settings.poll_interval == 2.5
    assert settings.maxlen == 100_000
    assert settings.max_payload_bytes == 2048
    assert settings.consumer_idle_timeout == 60.0
    assert (settings.prefetch, settings.redelivery_timeout, settings.operation_timeout) == (
        12,
        4.5,
        3.0,
    )
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.describe())
    backend = RedisBackend.from_env()
    assert SECRET not in repr(backend)
    assert backend.max_payload_bytes == 2048
    assert {variable.name for variable in RedisBackend.variables} >= set(environ)


def test_credentials_in_the_url_leave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://alice:p%40ss%3Aw%2Frd-Never-Shown@h:6379/1")
    settings = RedisSettings.from_env()
    assert settings.url == "redis://h:6379/1"
    assert settings.username == "alice"
    assert settings.password == Secret(SECRET)
    assert SECRET not in repr(settings)
    assert "p%40ss" not in repr(settings)


def test_variables_override_url_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://alice:old-password@h:6379/1")
    monkeypatch.setenv("REDIS_USERNAME", "bob")
    monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    settings = RedisSettings.from_env()
    assert (settings.url, settings.username, settings.password) == (
        "redis://h:6379/1",
        "bob",
        Secret(SECRET),
    )


def test_password_only_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret%40x@h")
    settings = RedisSettings.from_env()
    assert settings.url == "redis://h"
    assert settings.username is None
    assert settings.password == Secret("s3cret@x")


def test_unix_socket_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis/redis.sock?db=2")
    assert RedisSettings.from_env().url == "unix:///run/redis/redis.sock?db=2"
    monkeypatch.setenv("REDIS_URL", "unix://:hunter2@/run/redis/redis.sock?db=2")
    settings = RedisSettings.from_env()
    assert settings.url == "unix:///run/redis/redis.sock?db=2"
    assert settings.password == Secret("hunter2")


def test_all_problems_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {
        "REDIS_URL": "http://localhost:6379",
        "ABE_REDIS_POOL_SIZE": "0",
        "ABE_REDIS_BLOCK_TIME": "soon",
        "ABE_REDIS_MAXLEN": "-5",
        "ABE_REDIS_MAX_PAYLOAD_BYTES": "1e9",
        "ABE_REDIS_CONSUMER_IDLE_TIMEOUT": "0",
        "REDIS_TLS_CA_FILE": "/nonexistent/ca.pem",
        "ABE_MQ_PREFETCH": "none",
        "ABE_MQ_REDELIVERY_TIMEOUT": "-1",
        "ABE_MQ_OPERATION_TIMEOUT": "inf",
    }
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        RedisBackend.from_env()
    assert set(refused.value.variables) == set(bad)
    for name in bad:
        assert name in str(refused.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://localhost:6379", "must start with"),
        ("redis://localhost:port/0", "not a valid URL"),
        ("redis://localhost:6379/0?socket_timeout=soon", "redis-py"),
        ("unix://", "socket's path"),
        ("redis://h:6379/0?password=hunter2", "query option"),
        ("redis://user:pa/zz9secret@h:6379/0", "percent-encode"),
        ("redis://:hunter2@[::1/0", "'[' without its ']'"),
        ("redis://:hunter2@[::1]:99999/0", "port must be a number from 1 to 65535"),
        ("redis://:hunter2@h:0/0", "port must be a number"),
        ("REDISS://:hunter2@h:6379/0", "in lower case"),
        ("redis://:hunter2@h :6379/0", "space"),
        ("redis://:hunter2@h:6379/zero", "not a database number"),
        ("redis://:hunter2@h:6379/-1", "not a database number"),
        ("redis://:hunter2@h:6379/0/1", "not a database number"),
        ("redis://:hunter2@h:6379?db=-1", "db=-1; it must be at least 0"),
        ("redis://:hunter2@h:6379/0?db=1&db=2", "give it once"),
        ("redis://:hunter2@h:6379/0?foo=bar", "'foo', which abe does not pass on"),
        ("redis://:hunter2@h:6379/0?decode_responses=1", "'decode_responses'"),
        ("redis://:hunter2@h:6379/0?connection_class=x", "'connection_class'"),
        ("redis://:hunter2@h:6379/0?socket_timeout=-1", "positive number of seconds"),
        ("redis://:hunter2@h:6379/0?socket_connect_timeout=inf", "positive number"),
        ("redis://:hunter2@h:6379/0?max_connections=0", "at least 1"),
        ("redis://:hunter2@h:6379/0?ssl_cert_reqs=none", "use rediss:// for TLS"),
        ("rediss://:hunter2@h:6379/0?ssl_cert_reqs=bogus", "none, optional, required"),
        ("unix://:hunter2@/run/redis.sock?db=x", "redis-py"),
    ],
)
def test_bad_urls(monkeypatch: pytest.MonkeyPatch, url: str, why: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env()
    assert refused.value.variables == ("REDIS_URL",)
    assert why in str(refused.value)
    for secret in ("hunter2", "zz9secret"):
        assert secret not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://h/0?ssl_password=Opt1on;S3cret%",
        "rediss://h:port/0?ssl_password=Opt1on;S3cret%",
        "rediss://[::1/0?ssl_password=Opt1on;S3cret%",
        "rediss://h:6379/0?socket_timeout=soon&ssl_password=Opt1on;S3cret%",
        "rediss://h:6379/0?ssl_cert_reqs=Opt1on;S3cret%&ssl_password=Opt1on;S3cret%",
        "redis://h:6379/0?ssl_password=Opt1on;S3cret%",
        "rediss://h:6379/zero?ssl_password=Opt1on;S3cret%",
    ],
)
def test_a_bad_url_never_shows_a_secret_query_option(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)  # ';' and '%' written as they are
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env()
    assert refused.value.variables == ("REDIS_URL",)
    _no_option_secret(str(refused.value))
    with pytest.raises(ValueError, match=r"^url ") as built:
        RedisSettings(url=url)
    _no_option_secret(str(built.value))


_HOSTILE = [
    "redis://h:6379/0?socket_keepalive=maybe",
    "redis://h:6379/0?retry_on_timeout=",
    "redis://h:6379/0?lib_name=x&lib_version=1",
    "redis://h:6379/0?protocol=3",
    "redis://h:6379/0?socket_read_size=1",
    "redis://h:6379/0?timeout=1",
    "redis://h:6379/0?ssl=true",
    "redis://h:6379/0?path=/tmp/x",
    "redis://h:6379/0?host=other&port=1",
    "redis://h:6379/0?retry=1",
    "redis://h:6379/0?credential_provider=x",
    "redis://h:6379/0?encoder_class=x",
    "redis://h:6379/0?parser_class=x",
    "redis://h:6379/0?event_dispatcher=x",
    "redis://h:6379/0?encoding=rot13",
    "redis://h:6379/0?ssl_password=x",
    "rediss://h:6379/0?ssl_password=x",
    "rediss://h:6379/0?ssl_min_version=771",
    "rediss://h:6379/0?ssl_min_version=TLSv1_3",
    "rediss://h:6379/0?ssl_ca_path=/etc/ssl/certs",
    "rediss://h:6379/0?ssl_include_verify_flags=VERIFY_X509_STRICT",
    "rediss://h:6379/0?ssl_cert_reqs=optional&ssl_check_hostname=false",
    "rediss://h:6379/0?ssl_cert_reqs=none&ssl_check_hostname=true",
    "unix:///run/redis.sock?db=1&client_name=x",
    "unix:///run/redis.sock?socket_keepalive=true",
    "redis://[fe80::1%25eth0]:6379/0",
    "redis:///0",
    "redis://h",
    "redis://h:6379/",
    "redis://h:6379/0#fragment",
]


@pytest.mark.parametrize("url", _HOSTILE)
def test_a_url_is_refused_up_front_or_makes_a_connection(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Nothing a URL says escapes later, when the first connection is made, as a raw error."""
    monkeypatch.setenv("REDIS_URL", url)
    if url_problem(url) is not None:
        with pytest.raises(ConfigurationError) as refused:
            RedisSettings.from_env()
        assert refused.value.variables == ("REDIS_URL",)
        with pytest.raises(ValueError, match=r"^url "):  # the same, from code
            RedisSettings(url=url)
        return
    settings = RedisSettings.from_env()
    assert RedisSettings(url=url) == settings
    kwargs = connection_kwargs(settings, socket_timeout=1.0)
    connection = ConnectionPool(**kwargs).make_connection()
    if isinstance(connection, SSLConnection):
        connection.ssl_context.get()  # the TLS context too (no CA file: system CAs)


def test_bad_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://user:{SECRET.replace('@', '%40')}@h:1/0")
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env()
    assert "Never-Shown" not in str(refused.value)


def test_tls_files_need_rediss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("REDIS_TLS_CA_FILE", str(ca))
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env()
    assert refused.value.variables == ("REDIS_TLS_CA_FILE",)
    assert "rediss://" in str(refused.value)


def test_certificate_and_key_go_together(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    monkeypatch.setenv("REDIS_URL", "rediss://localhost:6379/0")
    monkeypatch.setenv("REDIS_TLS_CERT_FILE", str(cert))
    with pytest.raises(ConfigurationError) as refused:
        RedisSettings.from_env()
    assert refused.value.variables == ("REDIS_TLS_KEY_FILE",)


def test_settings_built_in_code_keep_secrets_out_of_the_url() -> None:
    settings = RedisSettings(url="redis://bob:hunter2@h:6379/0")
    assert settings.url == "redis://h:6379/0"
    assert settings.username == "bob"
    assert settings.password == Secret("hunter2")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(RedisBackend(settings))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "http://h"},
        {"pool_size": 0},
        {"maxlen": 0},
        {"max_payload_bytes": 0},
        {"tls_cert_file": Path("x.pem")},
        {"poll_interval": 0},
        {"pool_size": 10_001},  # the limits of the environment hold in code too
        {"poll_interval": 301},
        {"max_payload_bytes": 512 * 1024 * 1024 + 1},
        {"consumer_idle_timeout": 0.5},
        {"tls_ca_file": Path("ca.pem")},  # TLS files need rediss://
        {"url": "rediss://h/0", "tls_key_file": Path("k.pem")},
    ],
)
def test_settings_built_in_code_are_checked(kwargs: dict[str, object]) -> None:
    field = next(iter(kwargs)) if len(kwargs) == 1 else "tls_cert_file"
    with pytest.raises(ValueError, match=f"^{field} "):
        RedisSettings(**kwargs)  # type: ignore[arg-type]


OPTION_SECRET = "Opt1on;S3cret%"
"""A secret query option's value: a ';' and a '%' in it, percent-encoded in the URL."""
_ENCODED = "Opt1on%3BS3cret%25"
_HAS_SSL_PASSWORD = "password" in inspect.signature(RedisSSLContext).parameters
needs_ssl_password = pytest.mark.skipif(
    not _HAS_SSL_PASSWORD, reason="this redis-py has no ssl_password (added in 6.x)"
)


def _no_option_secret(text: str) -> None:
    for part in ("Opt1on", "S3cret", _ENCODED):
        assert part not in text, text


@needs_ssl_password
@pytest.mark.parametrize("option", ["ssl_password", "ssl%5Fpassword"])
def test_secret_query_options_are_never_shown(monkeypatch: pytest.MonkeyPatch, option: str) -> None:
    url = f"rediss://cache:6380/0?client_name=svc&{option}={_ENCODED}"
    monkeypatch.setenv("REDIS_URL", url)
    for settings in (RedisSettings.from_env(), RedisSettings(url=url)):
        assert settings.url == url  # redis-py still gets it
        backend = RedisBackend(settings)
        shown = (repr(settings), str(settings.describe()), settings.address, repr(backend))
        for text in shown:
            _no_option_secret(text)
        assert "ssl_password=***" in repr(settings)
        assert "client_name=svc" in repr(settings)


@needs_ssl_password
def test_secrets_to_scrub_include_a_secret_query_option() -> None:
    url = "rediss://alice:pw-in-url@h:6380/0?ssl_password=key-pass&client_name=svc"
    assert set(RedisSettings(url=url).secrets()) == {"pw-in-url", "key-pass"}
