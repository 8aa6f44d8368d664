"""A message-queue provider for abe: the backend class, its settings, the version."""

from abe_mq_rabbitmq._backend import RabbitmqBackend
from abe_mq_rabbitmq._settings import RabbitmqSettings
from abe_mq_rabbitmq._version import __version__

__all__ = ["RabbitmqBackend", "RabbitmqSettings", "__version__"]
