"""botocore's (and aiohttp's) exceptions as abe errors: one ErrorMap, SQS's error codes in it.

SQS refuses a request with a `ClientError` whose error code (read from an XML body where
an endpoint such as moto answers that way) picks the rule. No text shows a secret: the
backend scrubs the library's messages, and those of the exceptions they were raised from,
with its SecretFilter, whose `CREDENTIAL_PATTERNS` also hide the session tokens, access
key ids and signatures that botocore's credential chain found by itself.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable

import aiohttp
import botocore.exceptions as bce  # type: ignore[import-untyped]

from abe.errors import AbeError
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

__all__ = [
    "CREDENTIAL_PATTERNS",
    "ERRORS",
    "NONEXISTENT_QUEUE",
    "QUEUE_EXISTS",
    "STALE_HANDLE",
    "error_code",
    "scrub_chain",
]

NONEXISTENT_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
QUEUE_EXISTS = frozenset(
    {"QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists"}
)
STALE_HANDLE = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
        "InvalidReceiptHandle",
    }
)
_CODES = {
    "auth": (
        *("AccessDenied", "AccessDeniedException", "AuthFailure", "ExpiredToken"),
        *("ExpiredTokenException", "IncompleteSignature", "InvalidAccessKeyId"),
        *("InvalidClientTokenId", "InvalidSecurity", "AWS.SimpleQueueService.InvalidSecurity"),
        *("MissingAuthenticationToken", "MissingAuthenticationTokenException", "NotAuthorized"),
        *("OptInRequired", "RequestExpired", "SignatureDoesNotMatch"),
        *("UnrecognizedClientException", "KmsAccessDenied", "KMS.AccessDeniedException"),
    ),
    "unavailable": (
        *("InternalError", "InternalFailure", "ServiceUnavailable", "RequestThrottled"),
        *("ServiceUnavailableException", "Throttling", "ThrottlingException", "SlowDown"),
        *("TooManyRequestsException", "RequestLimitExceeded", "OverLimit", "KmsThrottled"),
        *("KMS.ThrottlingException", "RequestTimeout", "RequestTimeoutException"),
        *("QueueDeletedRecently", "AWS.SimpleQueueService.QueueDeletedRecently"),
        *("PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress"),
    ),
    "key": (*NONEXISTENT_QUEUE, *QUEUE_EXISTS, "InvalidAddress"),
    "payload": (
        *("InvalidMessageContents", "BatchRequestTooLong", "InvalidAttributeName"),
        *("AWS.SimpleQueueService.BatchRequestTooLong", "InvalidAttributeValue"),
    ),
}
CODE_KINDS = {code: kind for kind, codes in _CODES.items() for code in codes}
"""SQS (and AWS-wide) error codes; others are decided by operation and HTTP status."""
_INVALID_PARAMETER = {"CreateQueue": "key", "GetQueueUrl": "key", "SendMessage": "payload"}
_INVALID_PARAMETER["SendMessageBatch"] = "payload"
_INVALID_CODES = ("ValidationError", "InvalidParameter")
_XML_ERROR = re.compile(r"<Code>([^<]*)</Code>", re.DOTALL)
_XML_REPLY = re.compile(
    r"\(\d+\)( when calling the \w+ operation.*?): <.*?<Code>([^<]*)</Code>"
    r"(?:.*?<Message>([^<]*)</Message>)?.*",
    re.DOTALL,
)

CREDENTIAL_PATTERNS = (
    re.compile(r"(?i)x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?([^'\"\s,}]+)"),
    re.compile(r"Credential=([^/\s'\",]+)"),
    re.compile(r"Signature=([0-9a-fA-F]+)(?![\w-])"),
)
"""Session tokens, access key ids and signatures by their header patterns: the credentials
botocore's chain found (a profile, instance metadata), which no settings name."""


def error_code(error: BaseException) -> str:
    """The AWS error code of a ClientError (e.g. 'QueueDoesNotExist'), else ''.

    Some endpoints (moto among them) answer a JSON-protocol request with an XML error;
    botocore then reports the HTTP status as the code and the XML as the message.
    """
    details = (getattr(error, "response", None) or {}).get("Error", {})
    code = str(details.get("Code", ""))
    if code.isdigit() or not code:
        found = _XML_ERROR.search(str(details.get("Message", "")))
        return found.group(1) if found else code
    return code


def _kind(error: BaseException) -> str:
    """What a ClientError means: by its code, then its operation, then its HTTP status."""
    code = error_code(error)
    if code in CODE_KINDS:
        return CODE_KINDS[code]
    operation = str(getattr(error, "operation_name", ""))
    invalid = code.startswith("InvalidParameterValue") or code in _INVALID_CODES
    if invalid and operation in _INVALID_PARAMETER:
        return _INVALID_PARAMETER[operation]
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status == 403:
        return "auth"
    return "unavailable" if isinstance(status, int) and (status >= 500 or status == 429) else ""


def _is(kind: str) -> Callable[[BaseException], bool]:
    return lambda error: _kind(error) == kind


def _missing_queue(error: BaseException) -> bool:
    return error_code(error) in NONEXISTENT_QUEUE


def _tls(error: BaseException) -> bool:
    """Whether the TLS handshake failed (the error, or one it was raised from)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (bce.SSLError, aiohttp.ClientSSLError, ssl.SSLError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def readable(text: str) -> str:
    """An error text with an XML error body shortened to its code and message."""
    return _XML_REPLY.sub(lambda m: f"({m[2]}){m[1]}" + (f": {m[3]}" if m[3] else ""), text)


def scrub_chain(error: BaseException, scrub: Callable[[str], str]) -> None:
    """Rewrite the text of `error` and of every exception it was raised from with `scrub`.

    Core chains the client library's exception as the abe error's `__cause__`, so a
    traceback prints it; botocore's connection errors quote the endpoint URL. Done in
    place (`args`, and botocore's `kwargs`), so the chain keeps its shape.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in current.args)
        if args != current.args:
            current.args = args
        kwargs = getattr(current, "kwargs", None)
        if isinstance(kwargs, dict):
            kwargs.update((k, scrub(v)) for k, v in list(kwargs.items()) if isinstance(v, str))
        current = current.__cause__ or current.__context__


_DOWN = "check that the endpoint is up and reachable; the call can be retried"
_TLS = (
    "the TLS handshake with the endpoint failed: if the endpoint does not speak TLS, write it "
    "with http:// in AWS_ENDPOINT_URL_SQS (or AWS_ENDPOINT_URL); if its certificate is not "
    "trusted, set AWS_CA_BUNDLE to the file of its certificate authority"
)
_AUTH = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, "
    "AWS_PROFILE) and that their IAM policy allows SQS"
)
_CONFIG = config(
    "AWS_REGION / AWS_PROFILE", "check AWS_REGION, AWS_PROFILE and AWS_ENDPOINT_URL_SQS"
)
_PAYLOAD = "the message was not sent"
_OTHER = ErrorRule(AbeError, "see the cause below")
"""A broken installation or a bug: not retryable, not the caller's input."""
_NETWORK = (unavailable(_TLS, when=_tls), unavailable(_DOWN))

ERRORS = ErrorMap(
    "sqs",
    {
        # A response from SQS: decided by its error code, operation and HTTP status.
        bce.ClientError: (
            invalid_key("create the queue, or set ABE_SQS_AUTO_CREATE=true", when=_missing_queue),
            auth(_AUTH, when=_is("auth")),
            unavailable(_DOWN, when=_is("unavailable")),
            invalid_key("check the queue name and that the queue exists", when=_is("key")),
            payload(_PAYLOAD, when=_is("payload")),
            _OTHER,
        ),
        # The endpoint cannot be reached, or the connection broke: retry later.
        **dict.fromkeys((bce.HTTPClientError, bce.ConnectionError, aiohttp.ClientError), _NETWORK),
        **dict.fromkeys((bce.IncompleteReadError, bce.ChecksumError), _NETWORK[1]),
        **dict.fromkeys((bce.FlexibleChecksumError, bce.CapacityNotAvailableError), _NETWORK[1]),
        bce.MetadataRetrievalError: _NETWORK[1],
        OSError: _NETWORK,
        # abe's own deadline: core says which call and which variable to raise.
        **dict.fromkeys((TimeoutError, asyncio.TimeoutError), passthrough()),
        # No credentials, or the credential source refused: AuthenticationError.
        **dict.fromkeys(
            (
                *(bce.NoCredentialsError, bce.PartialCredentialsError, bce.NoAuthTokenError),
                *(bce.CredentialRetrievalError, bce.TokenRetrievalError, bce.SSOError),
                *(bce.UnknownTokenProviderError, bce.UnknownCredentialError, bce.LoginError),
                *(bce.RefreshWithMFAUnsupportedError, bce.UnknownSignatureVersionError),
                bce.UnsupportedSignatureVersionError,
            ),
            auth(_AUTH),
        ),
        # Region, profile, endpoint or client configuration: ConfigurationError.
        **dict.fromkeys(
            (
                *(bce.UnknownRegionError, bce.InvalidRegionError, bce.ServiceNotInRegionError),
                *(bce.BaseEndpointResolverError, bce.EndpointProviderError, bce.ProfileNotFound),
                *(bce.InvalidEndpointConfigurationError, bce.ConfigParseError, bce.ConfigNotFound),
                *(bce.InvalidEndpointDiscoveryConfigurationError, bce.InvalidConfigError),
                *(bce.InvalidProxiesConfigError, bce.InvalidDefaultsMode, bce.InvalidDNSNameError),
                *(bce.InvalidRetryConfigurationError, bce.InvalidIMDSEndpointError),
                *(bce.InvalidIMDSEndpointModeError, bce.InvalidChecksumConfigError),
                *(bce.InvalidSTSRegionalEndpointsConfigError, bce.InvalidHostLabelError),
                bce.InvalidS3UsEast1RegionalEndpointConfigError,
            ),
            _CONFIG,
        ),
        # Parameters botocore refused before sending: a message it cannot carry.
        **dict.fromkeys(
            (bce.ParamValidationError, bce.ValidationError, bce.MissingParametersError),
            payload(_PAYLOAD),
        ),
        # Everything else botocore raises: a broken installation or a bug.
        **dict.fromkeys((bce.BotoCoreError, bce.UndefinedModelAttributeError), _OTHER),
        **dict.fromkeys((bce.UnsupportedTLSVersionWarning, bce.ImminentRemovalWarning), _OTHER),
    },
)
"""Each exception class the client library raises, and what it means for abe."""
