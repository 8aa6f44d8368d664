"""What providers build on: the protocol, the base class and the pieces of its interface."""

from abe.backends.message_queue.base.backend import DEFAULT_GROUP, BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.keys import KeyRules, dead_letter_key
from abe.backends.message_queue.base.protocol import MessageQueueBackend
from abe.backends.message_queue.base.receiver import Receiver
from abe.backends.message_queue.base.settings import BackendSettings
from abe.backends.message_queue.base.subscription import Subscription

__all__ = [
    "DEFAULT_GROUP",
    "BackendSettings",
    "BaseBackend",
    "Capabilities",
    "Delivery",
    "IncomingMessage",
    "KeyRules",
    "MessageQueueBackend",
    "OutgoingMessage",
    "Receiver",
    "Subscription",
    "dead_letter_key",
]
