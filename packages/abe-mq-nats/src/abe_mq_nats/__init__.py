"""abe-mq-nats: the NATS JetStream provider for abe (entry point `nats`)."""

from abe_mq_nats._backend import NatsBackend
from abe_mq_nats._settings import NatsSettings
from abe_mq_nats._version import __version__

__all__ = ["NatsBackend", "NatsSettings", "__version__"]
