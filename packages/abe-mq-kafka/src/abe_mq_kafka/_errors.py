"""aiokafka's exceptions and the abe errors they become: one table, looked up along the MRO.

A class not listed takes its nearest listed base's entry, so `KafkaError` (and the few
classes outside it) stand for everything the broker fails transiently; the test
`assert_error_map_covers(KafkaBackend.errors, aiokafka.errors)` keeps it complete.
"""

from __future__ import annotations

import re
from types import TracebackType

import aiokafka.errors as E  # type: ignore[import-untyped]

from abe.provider import (
    ErrorMap,
    ErrorRule,
    auth,
    config,
    invalid_key,
    passthrough,
    payload,
    unavailable,
)

__all__ = ["ERRORS", "is_scram_rejection", "tidy"]

_SCRAM_STEPS = frozenset({"process_server_first_message", "process_server_final_message"})
_ERROR_CODE = re.compile(r"^(\w+): \[Error -?\d+\] \1(: )?")


def is_scram_rejection(error: BaseException) -> bool:
    """Whether aiokafka failed inside its SCRAM exchange: how it reports refused credentials.

    aiokafka (0.11-0.14) does not read the SCRAM `e=` error a broker sends for a wrong
    password; it fails on the missing `v=` field with KeyError (or ValueError on a bad
    signature). Seen from its last frame, that is a refused login.
    """
    traceback: TracebackType | None = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return False
    code = traceback.tb_frame.f_code
    return code.co_name in _SCRAM_STEPS and code.co_filename.endswith("conn.py")


def in_sasl_login(error: BaseException) -> bool:
    """Whether aiokafka raised `error` during a SASL login (a broker closing it refuses it)."""
    traceback: TracebackType | None = error.__traceback__
    while traceback is not None and traceback.tb_frame.f_code.co_name != "_do_sasl_handshake":
        traceback = traceback.tb_next
    return traceback is not None


def tidy(text: str) -> str:
    """`Name: [Error 6] Name: words` (aiokafka's form) as `Name: words`."""
    return _ERROR_CODE.sub(r"\1: ", text).rstrip(": ")


def _each(names: str, rule: ErrorRule) -> dict[type[BaseException], ErrorRule]:
    return {getattr(E, name): rule for name in names.split()}


_CREDENTIALS = "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SASL_MECHANISM"
_SCRAM = auth(
    f"the broker refused the SCRAM credentials; check {_CREDENTIALS}", when=is_scram_rejection
)
_REPLICAS = config("ABE_KAFKA_REPLICATION_FACTOR", "use at most as many replicas as brokers")

ERRORS = ErrorMap(
    "kafka",
    {
        **_each(
            "MessageSizeTooLargeError RecordTooLargeError RecordListTooLargeError "
            "InvalidCommitOffsetSizeError OffsetMetadataTooLargeError",
            payload(
                "the broker refused the record as too large: lower ABE_KAFKA_MAX_PAYLOAD_BYTES to "
                "fit the broker's message.max.bytes (and the topic's max.message.bytes), or send "
                "a reference to the data instead"
            ),
        ),
        E.InvalidTopicError: invalid_key(
            "Kafka refused the topic name; use letters, digits, '.', '_' and '-' only"
        ),
        E.UnsupportedSaslMechanismError: auth(
            f"the broker does not offer this SASL mechanism (or SASL at all); check {_CREDENTIALS}"
            " and KAFKA_SECURITY_PROTOCOL"
        ),
        E.KafkaConnectionError: auth(
            f"the broker closed the connection during the SASL login; check {_CREDENTIALS}",
            when=in_sasl_login,
        ),
        KeyError: _SCRAM,  # how aiokafka's SCRAM code fails on a refused login
        ValueError: _SCRAM,
        **_each(
            "AuthenticationFailedError AuthenticationMethodNotSupported SaslAuthenticationFailed "
            "IllegalSaslStateError TopicAuthorizationFailedError "
            "GroupAuthorizationFailedError ClusterAuthorizationFailedError "
            "TransactionalIdAuthorizationFailed DelegationTokenAuthDisabled "
            "DelegationTokenNotFound DelegationTokenOwnerMismatch DelegationTokenRequestNotAllowed "
            "DelegationTokenAuthorizationFailed DelegationTokenExpired InvalidPrincipalType "
            "SecurityDisabled",
            auth(f"the broker refused the credentials or permissions; check {_CREDENTIALS}, ACLs"),
        ),
        E.InvalidPartitionsError: config("ABE_KAFKA_PARTITIONS", "lower ABE_KAFKA_PARTITIONS"),
        E.InvalidReplicationFactorError: _REPLICAS,
        E.InvalidReplicationAssignmentError: _REPLICAS,
        E.InvalidSessionTimeoutError: config(
            "ABE_KAFKA_SESSION_TIMEOUT", "keep it within the brokers' group.*.session.timeout.ms"
        ),
        **_each(
            "InvalidConfigurationError KafkaConfigurationError UnsupportedCodecError "
            "PolicyViolationError UnrecognizedBrokerVersion IncompatibleBrokerVersion "
            "UnsupportedVersionError UnsupportedForMessageFormatError InvalidTransactionTimeout "
            "ListenerNotFound InvalidRequiredAcksError",
            config("KAFKA_BOOTSTRAP_SERVERS", "the cluster does not support what abe asked"),
        ),
        # misuse of the client (abe treats TopicAlreadyExists as success before translating)
        **_each(
            "IllegalStateError IllegalArgumentError IllegalOperation TopicAlreadyExistsError "
            "NoError",
            passthrough(),
        ),
        # everything else: the broker is away, busy, rebalancing, or failed this request
        E.KafkaError: unavailable("check that the brokers in KAFKA_BOOTSTRAP_SERVERS are up"),
        E.ConsumerStoppedError: unavailable("the consumer stopped; it restarts on the next read"),
    },
)
"""What each aiokafka exception becomes (asyncio.TimeoutError is core's to word)."""
