"""botocore's (and aiohttp's) exceptions as abe errors: one ErrorMap, SQS's error codes in it."""

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

_SQS = "AWS.SimpleQueueService."  # error codes come with and without this prefix
NONEXISTENT_QUEUE = frozenset({"NonExistentQueue", "QueueDoesNotExist"})
QUEUE_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})
STALE_HANDLE = frozenset({"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidReceiptHandle"})
_CODES = {
    "auth": "AccessDenied AccessDeniedException AuthFailure ExpiredToken ExpiredTokenException "
    "IncompleteSignature InvalidAccessKeyId InvalidClientTokenId InvalidSecurity NotAuthorized "
    "MissingAuthenticationToken MissingAuthenticationTokenException OptInRequired KmsAccessDenied "
    "RequestExpired SignatureDoesNotMatch UnrecognizedClientException KMS.AccessDeniedException",
    "unavailable": "InternalError InternalFailure ServiceUnavailable ServiceUnavailableException "
    "RequestThrottled Throttling ThrottlingException TooManyRequestsException SlowDown OverLimit "
    "RequestLimitExceeded KmsThrottled KMS.ThrottlingException RequestTimeout QueueDeletedRecently "
    "RequestTimeoutException PurgeQueueInProgress",
    "key": " ".join((*NONEXISTENT_QUEUE, *QUEUE_EXISTS, "InvalidAddress")),
    "payload": "InvalidMessageContents BatchRequestTooLong InvalidAttributeName "
    "InvalidAttributeValue",
}
CODE_KINDS = {code: kind for kind, codes in _CODES.items() for code in codes.split()}
_INVALID = {"CreateQueue": "key", "GetQueueUrl": "key", "SendMessage": "payload"}
_INVALID["SendMessageBatch"] = "payload"  # an invalid parameter: a queue name, or a message
_INVALID_CODES = ("InvalidParameter", "ValidationError")
_TLS_ERRORS = (bce.SSLError, aiohttp.ClientSSLError, ssl.SSLError)
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
"""Session tokens, key ids, signatures by header pattern: what botocore's chain found itself."""


def error_code(error: BaseException) -> str:
    """The AWS error code of a ClientError, else ''; from the XML if the endpoint (moto) sent it."""
    details = (getattr(error, "response", None) or {}).get("Error", {})
    code = str(details.get("Code", ""))
    found = _XML_CODE.search(str(details.get("Message", "")))
    return (found.group(1) if found and (code.isdigit() or not code) else code).removeprefix(_SQS)


def _kind(error: BaseException) -> str:
    """What a ClientError means: by its code, then its operation, then its HTTP status."""
    code, operation = error_code(error), str(getattr(error, "operation_name", ""))
    invalid = code.startswith("InvalidParameterValue") or code in _INVALID_CODES
    if code not in CODE_KINDS and invalid and operation in _INVALID:
        return _INVALID[operation]
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    unavailable = isinstance(status, int) and (status >= 500 or status == 429)
    return CODE_KINDS.get(code, "unavailable" if unavailable else "auth" if status == 403 else "")


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
    return any(isinstance(e, _TLS_ERRORS) for e in _chain(error))


def readable(text: str) -> str:
    """An error text with an XML error body shortened to its code and message."""
    return _XML_REPLY.sub(lambda m: f"({m[2]}){m[1]}" + (f": {m[3]}" if m[3] else ""), text)


def scrub_chain(error: BaseException, scrub: Callable[[str], str]) -> None:
    """`scrub` the text (`args`, `kwargs`) of `error` and of those it was raised from, in place."""
    for each in _chain(error):
        args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in each.args)
        if args != each.args:
            each.args = args
        kwargs: Any = getattr(each, "kwargs", None)
        if isinstance(kwargs, dict):
            kwargs.update((k, scrub(v)) for k, v in list(kwargs.items()) if isinstance(v, str))


def _each(names: str, rule: Any) -> dict[type[BaseException], Any]:
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
_IS = {kind: (lambda error, kind=kind: _kind(error) == kind) for kind in _CODES}
_BUG = ErrorRule(AbeError, "see the cause below")  # a broken installation or a bug
_SENT = "the message was not sent"

ERRORS = ErrorMap(
    "sqs",
    {
        bce.ClientError: (
            auth(_AUTH, when=_IS["auth"]),
            down(_DOWN, when=_IS["unavailable"]),
            invalid_key(
                "check the queue name and that the queue exists (or set ABE_SQS_AUTO_CREATE=true)",
                when=_IS["key"],
            ),
            payload(_SENT, when=_IS["payload"]),
            _BUG,
        ),
        **dict.fromkeys((aiohttp.ClientError, OSError, bce.HTTPClientError), _NETWORK),
        bce.ConnectionError: _NETWORK,
        **_each(
            "IncompleteReadError ChecksumError FlexibleChecksumError CapacityNotAvailableError "
            "MetadataRetrievalError",
            down(_DOWN),
        ),
        # abe's own deadline: core's error names the call and the variable to raise.
        **dict.fromkeys((TimeoutError, asyncio.TimeoutError), passthrough()),
        **_each(
            "NoCredentialsError PartialCredentialsError NoAuthTokenError SSOError LoginError "
            "CredentialRetrievalError TokenRetrievalError UnknownTokenProviderError "
            "UnknownCredentialError RefreshWithMFAUnsupportedError "
            "UnknownSignatureVersionError UnsupportedSignatureVersionError",
            auth(_AUTH),
        ),
        **_each(
            "UnknownRegionError InvalidRegionError ServiceNotInRegionError ProfileNotFound "
            "BaseEndpointResolverError EndpointProviderError InvalidEndpointConfigurationError "
            "InvalidEndpointDiscoveryConfigurationError ConfigParseError ConfigNotFound "
            "InvalidConfigError InvalidProxiesConfigError InvalidDefaultsMode "
            "InvalidDNSNameError InvalidHostLabelError InvalidRetryConfigurationError "
            "InvalidIMDSEndpointError InvalidIMDSEndpointModeError InvalidChecksumConfigError "
            "InvalidSTSRegionalEndpointsConfigError InvalidS3UsEast1RegionalEndpointConfigError",
            config(
                "AWS_REGION / AWS_PROFILE", "check AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_SQS"
            ),
        ),
        **_each("ParamValidationError ValidationError MissingParametersError", payload(_SENT)),
        **_each(
            "BotoCoreError UndefinedModelAttributeError UnsupportedTLSVersionWarning "
            "ImminentRemovalWarning",
            _BUG,
        ),
    },
)
