"""aiokafka's exceptions and the abe errors they become: one table, looked up along the MRO,
kept complete by `assert_error_map_covers(KafkaBackend.errors, aiokafka.errors)`."""

from __future__ import annotations

import re
import ssl
from traceback import walk_tb
from typing import Any

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

__all__ = ["ERRORS", "is_scram_rejection", "no_tls"]

_SCRAM_STEPS = frozenset({"process_server_first_message", "process_server_final_message"})
_ERROR_CODE = re.compile(r"^(\w+): \[Error -?\d+\] \1(: )?")


def is_scram_rejection(error: BaseException) -> bool:
    """Whether aiokafka's SCRAM exchange failed: a refused login, as it ignores the broker's e=."""
    last = [frame.f_code for frame, _ in walk_tb(error.__traceback__)][-1:]
    return any(c.co_name in _SCRAM_STEPS and c.co_filename.endswith("conn.py") for c in last)


def in_sasl_login(error: BaseException) -> bool:
    """Whether aiokafka raised `error` during a SASL login (a broker closing it refuses it)."""
    return any(f.f_code.co_name == "_do_sasl_handshake" for f, _ in walk_tb(error.__traceback__))


def tidy(text: str) -> str:
    """`Name: [Error 6] Name: words` (aiokafka's form) as `Name: words`."""
    return _ERROR_CODE.sub(r"\1: ", text).rstrip(": ")


def no_tls(settings: Any) -> str:
    """What to check when no TLS session starts (a plaintext listener does that to TLS)."""
    protocol = settings.security_protocol
    return (
        f"no TLS session: with KAFKA_SECURITY_PROTOCOL={protocol}, check that "
        f"KAFKA_BOOTSTRAP_SERVERS names the brokers' TLS listener (or use "
        f"{protocol.replace('SSL', 'PLAINTEXT')} for a plaintext one), and that they are up"
    )


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
        ssl.SSLCertVerificationError: unavailable(
            "the brokers' certificate is not trusted: set KAFKA_SSL_CAFILE to the CA that signed "
            "it, or check that KAFKA_BOOTSTRAP_SERVERS names the host the certificate is for"
        ),
        ssl.SSLError: unavailable(no_tls),
        E.UnknownError: unavailable(  # what brokers without InitProducerId (Tansu) answer
            "check that the brokers are up; if they do not support idempotent producers "
            "(InitProducerId), set ABE_KAFKA_IDEMPOTENT=false",
            when=lambda error, settings: getattr(settings, "idempotent", False),
        ),
        # everything else: the broker is away, busy, rebalancing, or failed this request
        E.KafkaError: unavailable("check that the brokers in KAFKA_BOOTSTRAP_SERVERS are up"),
        E.ConsumerStoppedError: unavailable("the consumer stopped; it restarts on the next read"),
    },
    tidy=tidy,
)
"""What each aiokafka exception becomes (asyncio.TimeoutError is core's to word)."""
