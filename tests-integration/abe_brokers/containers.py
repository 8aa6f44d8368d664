"""Resolution step 3: a broker in a container through testcontainers, where a Docker engine answers.

The engine check is one ``ping`` with a 3-second timeout, done once per session, so a
machine without Docker (only the CLI, or no socket) falls through at once. Set
``ABE_TEST_CONTAINERS=0`` to skip this step on a machine that has Docker; images can be
overridden with ``ABE_TEST_<KIND>_IMAGE``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .model import Kind
from .probes import probe_kafka, probe_nats, probe_rabbitmq, probe_redis, probe_sqs
from .procs import wait_until
from .selection import StepSkipped

DEFAULT_IMAGES: dict[Kind, str] = {
    "redis": "redis:7-alpine",
    "nats": "nats:2.10",
    "kafka": "confluentinc/cp-kafka:7.6.0",
    "sqs": "motoserver/moto:latest",
    "rabbitmq": "rabbitmq:3.10-alpine",
}
READY_TIMEOUT = 180.0  # an image pull on a cold machine is part of "coming up"


@dataclass
class Container:
    """A started container: its broker address, a way to remove it, and a line for reports."""

    address: str
    close: Callable[[], None]
    detail: str


def image_for(kind: Kind) -> str:
    """The image for ``kind``: ``ABE_TEST_<KIND>_IMAGE`` or the default."""
    return os.environ.get(f"ABE_TEST_{kind.upper()}_IMAGE") or DEFAULT_IMAGES[kind]


@functools.lru_cache(maxsize=1)
def _engine_state() -> str | None:
    if os.environ.get("ABE_TEST_CONTAINERS", "").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by ABE_TEST_CONTAINERS"
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        return f"testcontainers not installed ({exc})"
    try:
        DockerClient(timeout=3).client.ping()
    except Exception as exc:
        return f"no Docker engine answered ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def require_engine() -> None:
    """Raise :class:`StepSkipped` unless a Docker engine answers (checked once per session)."""
    reason = _engine_state()
    if reason is not None:
        raise StepSkipped(reason)


def _started(container: Any, probe: Callable[[], object], address: str, kind: Kind) -> Container:
    """Wait for ``probe`` then wrap; remove the container if it never gets ready."""
    try:
        wait_until(probe, timeout=READY_TIMEOUT, what=f"{kind} container")
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    short_id = str(container.get_wrapped_container().short_id)
    return Container(address, container.stop, f"{image_for(kind)} container {short_id}")


def start_container(kind: Kind) -> Container:
    """Start a container for ``kind`` and wait until its broker answers a real request."""
    require_engine()
    from testcontainers.core.container import DockerContainer

    image = image_for(kind)
    if kind == "kafka":
        from testcontainers.community.kafka import KafkaContainer

        kafka = KafkaContainer(image).with_kraft()
        kafka.start(timeout=int(READY_TIMEOUT))
        bootstrap = kafka.get_bootstrap_server()
        return _started(kafka, lambda: probe_kafka(bootstrap), bootstrap, kind)

    port = {"redis": 6379, "nats": 4222, "sqs": 5000, "rabbitmq": 5672}[kind]
    container = DockerContainer(image).with_exposed_ports(port)
    if kind == "nats":
        container = container.with_command("-js")
    container.start()
    try:
        host = container.get_container_host_ip()
        mapped = int(container.get_exposed_port(port))
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    if kind == "redis":
        url = f"redis://{host}:{mapped}/0"
        return _started(container, lambda: probe_redis(url), url, kind)
    if kind == "nats":
        url = f"nats://{host}:{mapped}"
        return _started(container, lambda: probe_nats(url), url, kind)
    if kind == "rabbitmq":
        url = f"amqp://guest:guest@{host}:{mapped}/"
        return _started(container, lambda: probe_rabbitmq(url), url, kind)
    endpoint = f"http://{host}:{mapped}"
    return _started(container, lambda: probe_sqs(endpoint), endpoint, kind)
