"""The one translation point from botocore's (and aiohttp's) exceptions to abe.errors.

`translate(error, where)` returns the most specific abe error for a client-library
exception, or the exception itself when it is not one (core then re-raises it). Core
chains the original as `__cause__`. Every class in `botocore.exceptions` is named in
`EXCEPTION_MAP` (a unit test walks them), and SQS's error codes in `CODE_MAP`; a class
botocore adds later is still mapped through its base classes. No message says a secret:
the backend passes its `SecretFilter.scrub` (its credentials, and the endpoint's secret
query options, which botocore's connection errors quote), and `redact()` removes session
tokens and access key ids that came from elsewhere by their header patterns.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import botocore.exceptions as bce  # type: ignore[import-untyped]

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidKeyError,
    PayloadError,
)

__all__ = [
    "CODE_MAP",
    "EXCEPTION_MAP",
    "NONEXISTENT_QUEUE",
    "QUEUE_EXISTS",
    "STALE_HANDLE",
    "Kind",
    "error_code",
    "kind_of",
    "redact",
    "scrub_chain",
    "translate",
]

Kind = Literal["unavailable", "auth", "config", "key", "payload", "other"]
"""What went wrong, in abe's terms; each kind becomes one abe error class."""

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

_AUTH_CODES = (
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidSecurity",
    "AWS.SimpleQueueService.InvalidSecurity",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "NotAuthorized",
    "OptInRequired",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "KmsAccessDenied",
    "KMS.AccessDeniedException",
)
_UNAVAILABLE_CODES = (
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestThrottled",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "OverLimit",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "QueueDeletedRecently",
    "AWS.SimpleQueueService.QueueDeletedRecently",
    "PurgeQueueInProgress",
    "AWS.SimpleQueueService.PurgeQueueInProgress",
)
_KEY_CODES = (*NONEXISTENT_QUEUE, *QUEUE_EXISTS, "InvalidAddress")
_PAYLOAD_CODES = (
    "InvalidMessageContents",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "InvalidAttributeName",
    "InvalidAttributeValue",
)
CODE_MAP: dict[str, Kind] = {
    **dict.fromkeys(_AUTH_CODES, "auth"),
    **dict.fromkeys(_UNAVAILABLE_CODES, "unavailable"),
    **dict.fromkeys(_KEY_CODES, "key"),
    **dict.fromkeys(_PAYLOAD_CODES, "payload"),
}
"""SQS (and AWS-wide) error codes; others are decided by operation and HTTP status."""

_QUEUE_OPERATIONS = frozenset({"CreateQueue", "GetQueueUrl"})
_SEND_OPERATIONS = frozenset({"SendMessage", "SendMessageBatch"})

EXCEPTION_MAP: dict[type[BaseException], Kind] = {
    # The endpoint cannot be reached, or the connection broke: retry later.
    bce.HTTPClientError: "unavailable",
    bce.ConnectionError: "unavailable",
    bce.EndpointConnectionError: "unavailable",
    bce.SSLError: "unavailable",
    bce.ConnectionClosedError: "unavailable",
    bce.ReadTimeoutError: "unavailable",
    bce.ConnectTimeoutError: "unavailable",
    bce.ProxyConnectionError: "unavailable",
    bce.ResponseStreamingError: "unavailable",
    bce.IncompleteReadError: "unavailable",
    bce.ChecksumError: "unavailable",
    bce.FlexibleChecksumError: "unavailable",
    bce.CapacityNotAvailableError: "unavailable",
    bce.MetadataRetrievalError: "unavailable",
    # No credentials, or the credential source refused: AuthenticationError.
    bce.NoCredentialsError: "auth",
    bce.PartialCredentialsError: "auth",
    bce.CredentialRetrievalError: "auth",
    bce.NoAuthTokenError: "auth",
    bce.TokenRetrievalError: "auth",
    bce.UnknownTokenProviderError: "auth",
    bce.UnknownCredentialError: "auth",
    bce.RefreshWithMFAUnsupportedError: "auth",
    bce.SSOError: "auth",
    bce.SSOTokenLoadError: "auth",
    bce.UnauthorizedSSOTokenError: "auth",
    bce.LoginError: "auth",
    bce.LoginRefreshRequired: "auth",
    bce.LoginInsufficientPermissions: "auth",
    bce.LoginTokenLoadError: "auth",
    bce.LoginAuthorizationCodeError: "auth",
    bce.UnknownSignatureVersionError: "auth",
    bce.UnsupportedSignatureVersionError: "auth",
    # Region, profile, endpoint or client configuration: ConfigurationError.
    bce.NoRegionError: "config",
    bce.UnknownRegionError: "config",
    bce.InvalidRegionError: "config",
    bce.ServiceNotInRegionError: "config",
    bce.BaseEndpointResolverError: "config",
    bce.EndpointVariantError: "config",
    bce.UnknownEndpointError: "config",
    bce.UnknownFIPSEndpointError: "config",
    bce.EndpointProviderError: "config",
    bce.EndpointResolutionError: "config",
    bce.UnknownEndpointResolutionBuiltInName: "config",
    bce.InvalidEndpointConfigurationError: "config",
    bce.InvalidEndpointDiscoveryConfigurationError: "config",
    bce.ProfileNotFound: "config",
    bce.ConfigParseError: "config",
    bce.ConfigNotFound: "config",
    bce.InvalidConfigError: "config",
    bce.InfiniteLoopConfigError: "config",
    bce.InvalidProxiesConfigError: "config",
    bce.InvalidDefaultsMode: "config",
    bce.InvalidRetryConfigurationError: "config",
    bce.InvalidMaxRetryAttemptsError: "config",
    bce.InvalidRetryModeError: "config",
    bce.InvalidIMDSEndpointError: "config",
    bce.InvalidIMDSEndpointModeError: "config",
    bce.InvalidChecksumConfigError: "config",
    bce.InvalidSTSRegionalEndpointsConfigError: "config",
    bce.InvalidS3UsEast1RegionalEndpointConfigError: "config",
    bce.InvalidDNSNameError: "config",
    bce.InvalidHostLabelError: "config",
    # Parameters botocore refused before sending: a message it cannot carry.
    bce.ParamValidationError: "payload",
    bce.ValidationError: "payload",
    bce.MissingParametersError: "payload",
    bce.UnknownKeyError: "payload",
    bce.RangeError: "payload",
    bce.UnknownParameterError: "payload",
    bce.AliasConflictParameterError: "payload",
    # A broken installation or a bug: not retryable, not the caller's input.
    bce.BotoCoreError: "other",
    bce.DataNotFoundError: "other",
    bce.UnknownServiceError: "other",
    bce.ApiVersionNotFoundError: "other",
    bce.UnknownServiceStyle: "other",
    bce.PaginationError: "other",
    bce.OperationNotPageableError: "other",
    bce.UnseekableStreamError: "other",
    bce.WaiterError: "other",
    bce.WaiterConfigError: "other",
    bce.InvalidExpressionError: "other",
    bce.UnknownClientMethodError: "other",
    bce.MD5UnavailableError: "other",
    bce.MissingDependencyException: "other",
    bce.UndefinedModelAttributeError: "other",
    bce.MissingServiceIdError: "other",
    bce.UnsupportedServiceProtocolsError: "other",
    bce.AwsChunkedWrapperError: "other",
    bce.StubResponseError: "other",
    bce.StubAssertionError: "other",
    bce.UnStubbedResponseError: "other",
    bce.InvalidS3AddressingStyleError: "other",
    bce.UnsupportedS3ArnError: "other",
    bce.UnsupportedS3ControlArnError: "other",
    bce.UnsupportedOutpostResourceError: "other",
    bce.UnsupportedS3ConfigurationError: "other",
    bce.UnsupportedS3AccesspointConfigurationError: "other",
    bce.UnsupportedS3ControlConfigurationError: "other",
    bce.UnsupportedTLSVersionWarning: "other",
    bce.ImminentRemovalWarning: "other",
    # A response from SQS: decided by its error code (CODE_MAP), operation and status.
    bce.ClientError: "other",
    bce.EventStreamError: "other",
    # Below botocore: aiohttp and the OS.
    aiohttp.ClientError: "unavailable",
    OSError: "unavailable",
    asyncio.TimeoutError: "unavailable",
}
"""Each exception class the client library raises, and what it means for abe."""

_CLASSES = {
    "unavailable": BackendUnavailableError,
    "auth": AuthenticationError,
    "key": InvalidKeyError,
    "payload": PayloadError,
    "other": AbeError,
}
_HINTS = {
    "unavailable": "check that the endpoint is up and reachable; the call can be retried",
    "auth": "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, "
    "AWS_PROFILE) and that their IAM policy allows SQS",
    "config": "check AWS_REGION, AWS_PROFILE and AWS_ENDPOINT_URL_SQS",
    "key": "check the queue name and that the queue exists",
    "payload": "the message was not sent",
    "other": "see the cause below",
}
_TLS_HINT = (
    "the TLS handshake with the endpoint failed: if the endpoint does not speak TLS, write it "
    "with http:// in AWS_ENDPOINT_URL_SQS (or AWS_ENDPOINT_URL); if its certificate is not "
    "trusted, set AWS_CA_BUNDLE to the file of its certificate authority"
)
_TLS_ERRORS = (bce.SSLError, aiohttp.ClientSSLError, ssl.SSLError)
_PATTERNS = (
    (re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+"), r"\1***"),
    (re.compile(r"(Credential=)[^/\s'\",]+"), r"\1***"),
    (re.compile(r"(Signature=)[0-9a-fA-F]+(?![\w-])"), r"\1***"),
)


def redact(text: str) -> str:
    """`text` with session tokens, access key ids and signatures (by their header patterns)
    replaced by '***': the credentials botocore's chain found, which no settings name."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_chain(error: BaseException, scrub: Callable[[str], str]) -> None:
    """Take secrets out of the text of `error` and of every exception it was raised from.

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
            for name, value in kwargs.items():
                if isinstance(value, str):
                    kwargs[name] = scrub(value)
        current = current.__cause__ or current.__context__


_XML_ERROR = re.compile(r"<Code>([^<]*)</Code>(?:.*?<Message>([^<]*)</Message>)?", re.DOTALL)


def error_code(error: BaseException) -> str:
    """The AWS error code of a ClientError (e.g. 'QueueDoesNotExist'), else ''.

    Some endpoints (moto among them) answer a JSON-protocol request with an XML error;
    botocore then reports the HTTP status as the code and the XML as the message, and
    the code is read from the XML.
    """
    response: Any = getattr(error, "response", None)
    if not isinstance(response, dict):
        return ""
    details = response.get("Error", {})
    code = str(details.get("Code", ""))
    if code.isdigit() or not code:
        found = _XML_ERROR.search(str(details.get("Message", "")))
        if found:
            return found.group(1)
    return code


def _message(error: BaseException) -> str:
    """The error's text, with an XML error body shortened to its code and message."""
    text = str(error) or type(error).__name__
    found = _XML_ERROR.search(text)
    if found and "<" in text:
        operation = getattr(error, "operation_name", "")
        text = f"An error occurred ({found.group(1)}) when calling the {operation} operation"
        if found.group(2):
            text += f": {found.group(2)}"
    return text


def kind_of(error: BaseException) -> Kind | None:
    """What `error` means for abe, or None when the client library did not raise it."""
    if isinstance(error, bce.ClientError):
        return _client_error_kind(error)
    for cls in type(error).__mro__:
        kind = EXCEPTION_MAP.get(cls)
        if kind is not None:
            return kind
    return None


def _client_error_kind(error: Any) -> Kind:
    code = error_code(error)
    kind = CODE_MAP.get(code)
    if kind is not None:
        return kind
    operation = str(getattr(error, "operation_name", ""))
    if code.startswith("InvalidParameterValue") or code in ("ValidationError", "InvalidParameter"):
        if operation in _QUEUE_OPERATIONS:
            return "key"
        if operation in _SEND_OPERATIONS:
            return "payload"
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return "unavailable"
    if isinstance(status, int) and status == 403:
        return "auth"
    return "other"


def translate(
    error: BaseException, *, where: str = "", scrub: Callable[[str], str] | None = None
) -> BaseException:
    """The abe error for a client-library exception, else `error`.

    `where` names the endpoint (already fit for display); `scrub` removes the backend's
    own secrets from the library's message.
    """
    if isinstance(error, AbeError):
        return error
    kind = kind_of(error)
    if kind is None:
        return error
    detail = _message(error)
    detail = redact(scrub(detail) if scrub is not None else detail)
    at = f" ({where})" if where else ""
    if kind == "config":
        return ConfigurationError(
            "sqs", {"AWS_REGION / AWS_PROFILE": f"{type(error).__name__}: {detail}{at}"}
        )
    if isinstance(error, bce.ClientError):
        code = error_code(error)
        if code in NONEXISTENT_QUEUE:
            detail = f"{detail}; create the queue, or set ABE_SQS_AUTO_CREATE=true"
    hint = _TLS_HINT if _is_tls_failure(error) else _HINTS[kind]
    return _CLASSES[kind](f"sqs: {detail}{at}; {hint}")


def _is_tls_failure(error: BaseException) -> bool:
    """Whether the TLS handshake failed (the error, or one it was raised from)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, _TLS_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
