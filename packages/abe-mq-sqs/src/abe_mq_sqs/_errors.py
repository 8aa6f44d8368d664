"""botocore's (and aiohttp's) exceptions as abe errors: one ErrorMap, SQS's error codes in it.

A `ClientError` (SQS refused the request) is told apart by its error code, read from an
XML body where an endpoint such as moto answers that way. The backend scrubs secrets from
every message first, `CREDENTIAL_PATTERNS` hiding those botocore's chain found itself.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import botocore.exceptions as bce  # type: ignore[import-untyped]

from abe.errors import AbeError
from abe.provider import ErrorMap, ErrorRule, auth, config, invalid_key, passthrough, payload
from abe.provider import unavailable as down


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NONEXISTENT_QUEUE = _words("AWS.SimpleQueueService.NonExistentQueue QueueDoesNotExist")
QUEUE_EXISTS = _words("QueueAlreadyExists QueueNameExists AWS.SimpleQueueService.QueueNameExists")
STALE_HANDLE = _words(
    "ReceiptHandleIsInvalid AWS.SimpleQueueService.ReceiptHandleIsInvalid MessageNotInflight "
    "AWS.SimpleQueueService.MessageNotInflight InvalidReceiptHandle"
)
"""Receipt handles SQS no longer takes: the message is visible again, or deleted."""
_CODES = {
    "auth": _words(
        "AccessDenied AccessDeniedException AuthFailure ExpiredToken ExpiredTokenException "
        "IncompleteSignature InvalidAccessKeyId InvalidClientTokenId InvalidSecurity "
        "AWS.SimpleQueueService.InvalidSecurity MissingAuthenticationToken NotAuthorized "
        "MissingAuthenticationTokenException OptInRequired RequestExpired KmsAccessDenied "
        "SignatureDoesNotMatch UnrecognizedClientException KMS.AccessDeniedException"
    ),
    "unavailable": _words(
        "InternalError InternalFailure ServiceUnavailable ServiceUnavailableException "
        "RequestThrottled Throttling ThrottlingException TooManyRequestsException SlowDown "
        "RequestLimitExceeded OverLimit KmsThrottled KMS.ThrottlingException RequestTimeout "
        "RequestTimeoutException QueueDeletedRecently PurgeQueueInProgress "
        "AWS.SimpleQueueService.QueueDeletedRecently AWS.SimpleQueueService.PurgeQueueInProgress"
    ),
    "key": NONEXISTENT_QUEUE | QUEUE_EXISTS | {"InvalidAddress"},
    "payload": _words(
        "InvalidMessageContents BatchRequestTooLong AWS.SimpleQueueService.BatchRequestTooLong "
        "InvalidAttributeName InvalidAttributeValue"
    ),
}
CODE_KINDS = {code: kind for kind, codes in _CODES.items() for code in codes}
"""SQS (and AWS-wide) error codes; others are decided by operation and HTTP status."""
_INVALID = {"CreateQueue": "key", "GetQueueUrl": "key", "SendMessage": "payload"}
_INVALID["SendMessageBatch"] = "payload"
_INVALID_CODES = ("InvalidParameter", "ValidationError")
"""What an invalid parameter means, by operation: a queue name, or a message."""
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
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
    """The AWS error code of a ClientError (e.g. 'QueueDoesNotExist'), else ''; read from
    the XML when an endpoint (moto) answered with one and botocore took the status as code."""
    details = (getattr(error, "response", None) or {}).get("Error", {})
    code = str(details.get("Code", ""))
    found = _XML_CODE.search(str(details.get("Message", "")))
    return found.group(1) if found and (code.isdigit() or not code) else code


def _kind(error: BaseException) -> str:
    """What a ClientError means: by its code, then its operation, then its HTTP status."""
    code = error_code(error)
    invalid = code.startswith("InvalidParameterValue") or code in _INVALID_CODES
    operation = str(getattr(error, "operation_name", ""))
    if code not in CODE_KINDS and invalid and operation in _INVALID:
        return _INVALID[operation]
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    by_status = "auth" if status == 403 else ""
    if isinstance(status, int) and (status >= 500 or status == 429):
        by_status = "unavailable"
    return CODE_KINDS.get(code, by_status)


def _is(kind: str) -> Callable[[BaseException], bool]:
    return lambda error: _kind(error) == kind


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception it was raised from, each once."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _tls(error: BaseException) -> bool:
    """Whether the TLS handshake failed (the error, or one it was raised from)."""
    tls = (bce.SSLError, aiohttp.ClientSSLError, ssl.SSLError)
    return any(isinstance(each, tls) for each in _chain(error))


def readable(text: str) -> str:
    """An error text with an XML error body shortened to its code and message."""
    return _XML_REPLY.sub(lambda m: f"({m[2]}){m[1]}" + (f": {m[3]}" if m[3] else ""), text)


def scrub_chain(error: BaseException, scrub: Callable[[str], str]) -> None:
    """Rewrite with `scrub` the text of `error` and of every exception it was raised from,
    in place (`args`, botocore's `kwargs`): core chains it as the abe error's cause, and
    botocore's connection errors quote the endpoint URL."""
    for each in _chain(error):
        args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in each.args)
        if args != each.args:
            each.args = args
        kwargs: Any = getattr(each, "kwargs", None)
        if isinstance(kwargs, dict):
            kwargs.update((k, scrub(v)) for k, v in list(kwargs.items()) if isinstance(v, str))


def _each(names: str, rule: Any) -> dict[type[BaseException], Any]:
    """`rule` for each of the botocore exception classes named."""
    return dict.fromkeys((getattr(bce, name) for name in names.split()), rule)


_DOWN = "check that the endpoint is up and reachable; the call can be retried"
_TLS = (
    "the TLS handshake with the endpoint failed: if the endpoint does not speak TLS, write it "
    "with http:// in AWS_ENDPOINT_URL_SQS (or AWS_ENDPOINT_URL); if its certificate is not "
    "trusted, set AWS_CA_BUNDLE to the file of its certificate authority"
)
_NETWORK = (down(_TLS, when=_tls), down(_DOWN))
_AUTH = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, "
    "AWS_PROFILE) and that their IAM policy allows SQS"
)
_CONFIG = "check AWS_REGION, AWS_PROFILE and AWS_ENDPOINT_URL_SQS"
_BUG = ErrorRule(AbeError, "see the cause below")
"""A broken installation or a bug: not retryable, not the caller's input."""

ERRORS = ErrorMap(
    "sqs",
    {
        # A response from SQS: decided by its error code, operation and HTTP status.
        bce.ClientError: (
            invalid_key(
                "create the queue, or set ABE_SQS_AUTO_CREATE=true",
                when=lambda error: error_code(error) in NONEXISTENT_QUEUE,
            ),
            auth(_AUTH, when=_is("auth")),
            down(_DOWN, when=_is("unavailable")),
            invalid_key("check the queue name and that the queue exists", when=_is("key")),
            payload("the message was not sent", when=_is("payload")),
            _BUG,
        ),
        # The endpoint cannot be reached, or the connection broke: retry later.
        **dict.fromkeys((aiohttp.ClientError, OSError), _NETWORK),
        **_each("HTTPClientError ConnectionError", _NETWORK),
        **_each(
            "IncompleteReadError ChecksumError FlexibleChecksumError CapacityNotAvailableError "
            "MetadataRetrievalError",
            down(_DOWN),
        ),
        # abe's own deadline: core's error names the call and the variable to raise.
        **dict.fromkeys((TimeoutError, asyncio.TimeoutError), passthrough()),
        # No credentials, or the credential source refused: AuthenticationError.
        **_each(
            "NoCredentialsError PartialCredentialsError NoAuthTokenError SSOError LoginError "
            "CredentialRetrievalError TokenRetrievalError UnknownTokenProviderError "
            "UnknownCredentialError RefreshWithMFAUnsupportedError "
            "UnknownSignatureVersionError UnsupportedSignatureVersionError",
            auth(_AUTH),
        ),
        # Region, profile, endpoint or client configuration: ConfigurationError.
        **_each(
            "UnknownRegionError InvalidRegionError ServiceNotInRegionError ProfileNotFound "
            "BaseEndpointResolverError EndpointProviderError InvalidEndpointConfigurationError "
            "InvalidEndpointDiscoveryConfigurationError ConfigParseError ConfigNotFound "
            "InvalidConfigError InvalidProxiesConfigError InvalidDefaultsMode "
            "InvalidDNSNameError InvalidHostLabelError InvalidRetryConfigurationError "
            "InvalidIMDSEndpointError InvalidIMDSEndpointModeError InvalidChecksumConfigError "
            "InvalidSTSRegionalEndpointsConfigError InvalidS3UsEast1RegionalEndpointConfigError",
            config("AWS_REGION / AWS_PROFILE", _CONFIG),
        ),
        # Parameters botocore refused before sending: a message it cannot carry.
        **_each(
            "ParamValidationError ValidationError MissingParametersError",
            payload("the message was not sent"),
        ),
        # Everything else botocore raises: a broken installation or a bug.
        **_each(
            "BotoCoreError UndefinedModelAttributeError UnsupportedTLSVersionWarning "
            "ImminentRemovalWarning",
            _BUG,
        ),
    },
)
"""Each exception class the client library raises, and what it means for abe."""
