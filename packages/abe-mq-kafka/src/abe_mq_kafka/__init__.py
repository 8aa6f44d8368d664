"""abe's Kafka provider: keys are topics, groups are consumer groups, on aiokafka."""

from abe_mq_kafka._backend import KafkaBackend
from abe_mq_kafka._settings import KafkaSettings
from abe_mq_kafka._version import __version__

__all__ = ["KafkaBackend", "KafkaSettings", "__version__"]
