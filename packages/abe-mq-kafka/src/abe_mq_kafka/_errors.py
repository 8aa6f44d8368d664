"""The one translation point from aiokafka's exceptions to abe's error tree.

Every exception class aiokafka defines is listed in exactly one of the tables below
(a unit test walks `aiokafka.errors` and fails on a class that is not), and a class
that is not listed is mapped through its nearest listed base class. Messages say
what went wrong and what to do; none repeats a password (aiokafka's own never do,
and abe only adds the broker addresses).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import aiokafka.errors as kafka_errors  # type: ignore[import-untyped]

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = ["CATEGORIES", "category_of", "describe", "is_scram_rejection", "translate"]

_E = kafka_errors

PAYLOAD = "payload"
"""The broker refused the record for its size: PayloadError."""
KEY = "key"
"""The broker refused the topic name: InvalidKeyError."""
AUTH = "auth"
"""The broker refused the credentials or the permissions: AuthenticationError."""
CONFIG = "config"
"""The settings do not fit the cluster (partitions, replication, timeouts): ConfigurationError."""
UNAVAILABLE = "unavailable"
"""The broker is away, busy, rebalancing or failed the request: BackendUnavailableError."""
USAGE = "usage"
"""A misuse of the client that abe must never cause: re-raised unchanged, it is a bug."""

CATEGORIES: dict[type[BaseException], str] = {
    # sizes
    _E.MessageSizeTooLargeError: PAYLOAD,
    _E.RecordTooLargeError: PAYLOAD,
    _E.RecordListTooLargeError: PAYLOAD,
    _E.InvalidCommitOffsetSizeError: PAYLOAD,
    _E.OffsetMetadataTooLargeError: PAYLOAD,
    # names
    _E.InvalidTopicError: KEY,
    # credentials and permissions
    _E.AuthenticationFailedError: AUTH,
    _E.AuthenticationMethodNotSupported: AUTH,
    _E.SaslAuthenticationFailed: AUTH,
    _E.UnsupportedSaslMechanismError: AUTH,
    _E.IllegalSaslStateError: AUTH,
    _E.TopicAuthorizationFailedError: AUTH,
    _E.GroupAuthorizationFailedError: AUTH,
    _E.ClusterAuthorizationFailedError: AUTH,
    _E.TransactionalIdAuthorizationFailed: AUTH,
    _E.DelegationTokenAuthDisabled: AUTH,
    _E.DelegationTokenNotFound: AUTH,
    _E.DelegationTokenOwnerMismatch: AUTH,
    _E.DelegationTokenRequestNotAllowed: AUTH,
    _E.DelegationTokenAuthorizationFailed: AUTH,
    _E.DelegationTokenExpired: AUTH,
    _E.InvalidPrincipalType: AUTH,
    _E.SecurityDisabled: AUTH,
    # settings that the cluster refuses
    _E.InvalidPartitionsError: CONFIG,
    _E.InvalidReplicationFactorError: CONFIG,
    _E.InvalidReplicationAssignmentError: CONFIG,
    _E.InvalidConfigurationError: CONFIG,
    _E.InvalidSessionTimeoutError: CONFIG,
    _E.InvalidRequiredAcksError: CONFIG,
    _E.KafkaConfigurationError: CONFIG,
    _E.UnsupportedCodecError: CONFIG,
    _E.PolicyViolationError: CONFIG,
    _E.UnrecognizedBrokerVersion: CONFIG,
    _E.IncompatibleBrokerVersion: CONFIG,
    _E.UnsupportedVersionError: CONFIG,
    _E.UnsupportedForMessageFormatError: CONFIG,
    _E.InvalidTransactionTimeout: CONFIG,
    _E.ListenerNotFound: CONFIG,
    # misuse of the client: abe never does these, so they are bugs and pass through
    _E.IllegalStateError: USAGE,
    _E.IllegalArgumentError: USAGE,
    _E.IllegalOperation: USAGE,
    _E.TopicAlreadyExistsError: USAGE,  # abe treats it as success before translating
    _E.NoError: USAGE,
    # everything else: the broker is away, busy, rebalancing, or failed this request
    _E.KafkaError: UNAVAILABLE,
    _E.NoBrokersAvailable: UNAVAILABLE,
    _E.NodeNotReadyError: UNAVAILABLE,
    _E.KafkaProtocolError: UNAVAILABLE,
    _E.CorrelationIdError: UNAVAILABLE,
    _E.Cancelled: UNAVAILABLE,
    _E.TooManyInFlightRequests: UNAVAILABLE,
    _E.StaleMetadata: UNAVAILABLE,
    _E.MetadataEmptyBrokerList: UNAVAILABLE,
    _E.CommitFailedError: UNAVAILABLE,
    _E.KafkaUnavailableError: UNAVAILABLE,
    _E.KafkaTimeoutError: UNAVAILABLE,
    _E.KafkaConnectionError: UNAVAILABLE,
    _E.QuotaViolationError: UNAVAILABLE,
    _E.ConsumerStoppedError: UNAVAILABLE,
    _E.NoOffsetForPartitionError: UNAVAILABLE,
    _E.ProducerClosed: UNAVAILABLE,
    _E.ProducerFenced: UNAVAILABLE,
    _E.BrokerResponseError: UNAVAILABLE,
    _E.UnknownError: UNAVAILABLE,
    _E.OffsetOutOfRangeError: UNAVAILABLE,
    _E.CorruptRecordException: UNAVAILABLE,
    _E.UnknownTopicOrPartitionError: UNAVAILABLE,
    _E.InvalidFetchRequestError: UNAVAILABLE,
    _E.LeaderNotAvailableError: UNAVAILABLE,
    _E.NotLeaderForPartitionError: UNAVAILABLE,
    _E.RequestTimedOutError: UNAVAILABLE,
    _E.BrokerNotAvailableError: UNAVAILABLE,
    _E.ReplicaNotAvailableError: UNAVAILABLE,
    _E.StaleControllerEpochError: UNAVAILABLE,
    _E.StaleLeaderEpochCodeError: UNAVAILABLE,
    _E.GroupLoadInProgressError: UNAVAILABLE,
    _E.GroupCoordinatorNotAvailableError: UNAVAILABLE,
    _E.NotCoordinatorForGroupError: UNAVAILABLE,
    _E.NotEnoughReplicasError: UNAVAILABLE,
    _E.NotEnoughReplicasAfterAppendError: UNAVAILABLE,
    _E.IllegalGenerationError: UNAVAILABLE,
    _E.InconsistentGroupProtocolError: UNAVAILABLE,
    _E.InvalidGroupIdError: UNAVAILABLE,
    _E.UnknownMemberIdError: UNAVAILABLE,
    _E.RebalanceInProgressError: UNAVAILABLE,
    _E.InvalidTimestampError: UNAVAILABLE,
    _E.NotControllerError: UNAVAILABLE,
    _E.InvalidRequestError: UNAVAILABLE,
    _E.OutOfOrderSequenceNumber: UNAVAILABLE,
    _E.DuplicateSequenceNumber: UNAVAILABLE,
    _E.InvalidProducerEpoch: UNAVAILABLE,
    _E.InvalidTxnState: UNAVAILABLE,
    _E.InvalidProducerIdMapping: UNAVAILABLE,
    _E.ConcurrentTransactions: UNAVAILABLE,
    _E.TransactionCoordinatorFenced: UNAVAILABLE,
    _E.OperationNotAttempted: UNAVAILABLE,
    _E.KafkaStorageError: UNAVAILABLE,
    _E.LogDirNotFound: UNAVAILABLE,
    _E.UnknownProducerId: UNAVAILABLE,
    _E.ReassignmentInProgress: UNAVAILABLE,
    _E.NonEmptyGroup: UNAVAILABLE,
    _E.GroupIdNotFound: UNAVAILABLE,
    _E.FetchSessionIdNotFound: UNAVAILABLE,
    _E.InvalidFetchSessionEpoch: UNAVAILABLE,
    _E.MemberIdRequired: UNAVAILABLE,
}
"""Each aiokafka exception class and what it becomes."""

_HINTS = {
    PAYLOAD: "the broker refused the record as too large: lower ABE_KAFKA_MAX_PAYLOAD_BYTES to "
    "fit the broker's message.max.bytes (and the topic's max.message.bytes), or send a "
    "reference to the data instead",
    KEY: "Kafka refused the topic name; use letters, digits, '.', '_' and '-' only",
    AUTH: "the broker refused the credentials or their permissions; check "
    "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SASL_MECHANISM and the ACLs",
    UNAVAILABLE: "check that the brokers in KAFKA_BOOTSTRAP_SERVERS are up and reachable",
}

_CONFIG_VARIABLE = {
    _E.InvalidPartitionsError: "ABE_KAFKA_PARTITIONS",
    _E.InvalidReplicationFactorError: "ABE_KAFKA_REPLICATION_FACTOR",
    _E.InvalidReplicationAssignmentError: "ABE_KAFKA_REPLICATION_FACTOR",
    _E.InvalidSessionTimeoutError: "ABE_KAFKA_SESSION_TIMEOUT",
    _E.UnsupportedSaslMechanismError: "KAFKA_SASL_MECHANISM",
}

_SCRAM_STEPS = frozenset({"process_server_first_message", "process_server_final_message"})


def category_of(error: BaseException) -> str | None:
    """The table entry for the error's class or its nearest listed base; None if not aiokafka's."""
    for klass in type(error).__mro__:
        category = CATEGORIES.get(klass)
        if category is not None:
            return category
    return None


def translate(error: Exception, where: str) -> Exception:
    """The abe error for an aiokafka error (or the error itself when it is not aiokafka's).

    `where` names the brokers, for the message; it never holds a secret.
    """
    if isinstance(error, AbeError):
        return error
    if is_scram_rejection(error):
        return AuthenticationError(
            f"kafka: the broker at {where} refused the SCRAM credentials; "
            f"{_HINTS[AUTH].split('; ', 1)[1]}"
        )
    if isinstance(error, asyncio.TimeoutError):
        return error  # core words timeouts itself (BackendUnavailableError with the limit)
    category = category_of(error)
    if category is None or category == USAGE:
        return error
    text = f"{type(error).__name__}: {describe(error)}"
    if category == CONFIG:
        variable = next(
            (name for klass, name in _CONFIG_VARIABLE.items() if isinstance(error, klass)),
            "KAFKA_BOOTSTRAP_SERVERS",
        )
        problem = f"the cluster at {where} refused it ({text})"
        return ConfigurationError("kafka", {variable: problem})
    message = f"kafka ({where}): {text}; {_HINTS[category]}"
    if category == PAYLOAD:
        return PayloadError(message)
    if category == KEY:
        return InvalidKeyError(message)
    if category == AUTH:
        return AuthenticationError(message)
    return BackendUnavailableError(message)


def describe(error: BaseException) -> str:
    """The error's own words without the class name and code aiokafka puts in front."""
    text = str(error).strip()
    name = type(error).__name__
    if text.startswith(f"{name}: "):  # aiokafka's str() often repeats the class name
        text = text[len(name) + 2 :]
    if text.startswith("[Error ") and "] " in text:
        text = text.split("] ", 1)[1]
        if text.startswith(f"{name}: "):
            text = text[len(name) + 2 :]
    return text or getattr(error, "description", "") or "no detail given"


def is_scram_rejection(error: BaseException) -> bool:
    """Whether aiokafka failed inside its SCRAM exchange: how it reports refused credentials.

    aiokafka (0.11-0.14) does not read the SCRAM `e=` error a broker sends for a wrong
    password; it fails on the missing `v=` field with KeyError (or ValueError on a bad
    signature). Seen from its last frame, that is a refused login.
    """
    if not isinstance(error, (KeyError, ValueError)):
        return False
    traceback: TracebackType | None = error.__traceback__
    last = None
    while traceback is not None:
        last = traceback
        traceback = traceback.tb_next
    if last is None:
        return False
    code = last.tb_frame.f_code
    return code.co_name in _SCRAM_STEPS and code.co_filename.endswith("conn.py")
