"""A message-queue provider for abe: the backend class, its settings, the version."""

from abe_mq_example._backend import ExampleBackend
from abe_mq_example._settings import ExampleSettings
from abe_mq_example._version import __version__

__all__ = ["ExampleBackend", "ExampleSettings", "__version__"]
