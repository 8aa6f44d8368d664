"""Amazon SQS for abe: `pip install abe-mq-sqs`, set `QUEUE_BACKEND=sqs` and the AWS variables.

Each key is a queue (a key ending in `.fifo` a FIFO queue); see the README for the
variables, the capabilities and the wire format.
"""

from abe_mq_sqs._backend import SqsBackend
from abe_mq_sqs._settings import SqsSettings
from abe_mq_sqs._version import __version__

__all__ = ["SqsBackend", "SqsSettings", "__version__"]
