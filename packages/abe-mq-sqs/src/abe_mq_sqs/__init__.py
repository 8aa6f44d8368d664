"""Amazon SQS for abe: `pip install abe-mq-sqs`, set `QUEUE_BACKEND=sqs` and the AWS variables."""

from abe_mq_sqs._backend import SqsBackend
from abe_mq_sqs._settings import SqsSettings
from abe_mq_sqs._version import __version__

__all__ = ["SqsBackend", "SqsSettings", "__version__"]
