"""Redis Streams for abe: keys are streams, groups are consumer groups (QUEUE_BACKEND=redis)."""

from abe_mq_redis._backend import RedisBackend
from abe_mq_redis._settings import RedisSettings
from abe_mq_redis._version import __version__

__all__ = ["RedisBackend", "RedisSettings", "__version__"]
