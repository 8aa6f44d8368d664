"""Everything a provider author builds on, in one module: a provider is only its broker calls.

    from abe.provider import BaseBackend, BackendSettings, ErrorMap, Receiver, setting

A provider subclasses `BaseBackend` (publishing, validation, ack-on-next, retries and
dead letters are core's), declares its settings with `setting()` on a `BackendSettings`
dataclass, maps its client library's exceptions in an `ErrorMap`, reads with a
`Receiver`, shares one `LazyClient` between backend and receivers (and a `OncePerKey` of
the topics or queues it made), and waits with the helpers of `deadlines` (never
`asyncio.wait_for`). Applications import `abe` instead.
"""

from abe.backends.message_queue.base.backend import DEFAULT_GROUP, BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.base.deadlines import (
    Deadline,
    Stopped,
    bounded,
    close_quietly,
    settle,
    until_stopped,
    wait_event,
)
from abe.backends.message_queue.base.error_map import (
    CONNECTION_DROPPED,
    TLS_HANDSHAKE,
    TLS_HOST_MISMATCH,
    TLS_UNTRUSTED,
    ErrorMap,
    ErrorRule,
    auth,
    caused_by,
    config,
    invalid_key,
    passthrough,
    payload,
    unavailable,
)
from abe.backends.message_queue.base.headers import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_NOT_BEFORE,
    HEADER_ORIGINAL_KEY,
    HEADER_PACKED,
    HEADER_PREFIX,
    HEADER_PUBLISHED_AT,
    header_text,
)
from abe.backends.message_queue.base.keys import DEAD_LETTER_SUFFIX, KeyRules, dead_letter_key
from abe.backends.message_queue.base.lazy_client import LazyClient
from abe.backends.message_queue.base.once import OncePerKey
from abe.backends.message_queue.base.receiver import Receiver
from abe.backends.message_queue.base.settings import (
    BackendSettings,
    SettingsError,
    Url,
    common_setting,
    setting,
    split_url_credentials,
)
from abe.redaction import SecretFilter, redact_url, url_secrets
from abe.settings import Secret

__all__ = [
    "CONNECTION_DROPPED",
    "TLS_HANDSHAKE",
    "TLS_HOST_MISMATCH",
    "TLS_UNTRUSTED",
    "Url",
    "caused_by",
    "url_secrets",
    "DEAD_LETTER_SUFFIX",
    "DEFAULT_GROUP",
    "HEADER_ATTEMPT",
    "HEADER_ATTEMPTS",
    "HEADER_ERROR",
    "HEADER_ID",
    "HEADER_NOT_BEFORE",
    "HEADER_ORIGINAL_KEY",
    "HEADER_PACKED",
    "HEADER_PREFIX",
    "HEADER_PUBLISHED_AT",
    "BackendSettings",
    "BaseBackend",
    "Capabilities",
    "Deadline",
    "ErrorMap",
    "ErrorRule",
    "IncomingMessage",
    "KeyRules",
    "LazyClient",
    "OncePerKey",
    "OutgoingMessage",
    "Receiver",
    "Secret",
    "SecretFilter",
    "SettingsError",
    "Stopped",
    "auth",
    "bounded",
    "close_quietly",
    "common_setting",
    "config",
    "dead_letter_key",
    "header_text",
    "invalid_key",
    "passthrough",
    "payload",
    "redact_url",
    "setting",
    "settle",
    "split_url_credentials",
    "unavailable",
    "until_stopped",
    "wait_event",
]
