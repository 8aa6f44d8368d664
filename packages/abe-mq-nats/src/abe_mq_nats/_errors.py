"""The one place nats-py's exceptions become abe's (STYLE.md 6).

`ERROR_MAP` names every exception class of `nats.errors` and `nats.js.errors` and what it
becomes; a unit test walks both modules and fails on a class missing here. A class
mapped to None is left as it is: it reports a misuse of nats-py (a bug in this
package) or a feature abe does not use (key-value and object stores), not a broker
condition an application could handle. Lookups follow the class's MRO, so nats-py's
deprecated `nats.aio.errors` aliases map like the classes they subclass.
"""

from __future__ import annotations

import asyncio
import re
import ssl

import nats.errors
import nats.js.errors

from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendUnavailableError,
    DeliveryStateError,
    InvalidKeyError,
    PayloadError,
)

__all__ = ["ERROR_MAP", "is_auth_error", "safe_text", "translate"]

_UNAVAILABLE = BackendUnavailableError
_E = nats.errors
_JS = nats.js.errors

ERROR_MAP: dict[type[BaseException], tuple[type[AbeError] | None, str]] = {
    # --- nats.errors: the connection ------------------------------------------------------
    _E.Error: (_UNAVAILABLE, "the NATS client failed"),
    _E.TimeoutError: (_UNAVAILABLE, "NATS did not answer in time"),
    _E.FlushTimeoutError: (_UNAVAILABLE, "NATS did not take the buffered data in time"),
    _E.DrainTimeoutError: (_UNAVAILABLE, "draining the connection did not finish in time"),
    _E.NoRespondersError: (_UNAVAILABLE, "nothing answered the request (is JetStream on?)"),
    _E.StaleConnectionError: (_UNAVAILABLE, "the connection went stale"),
    _E.UnexpectedEOF: (_UNAVAILABLE, "the server closed the connection"),
    _E.OutboundBufferLimitError: (
        _UNAVAILABLE,
        "the connection is down and its outbound buffer is full",
    ),
    _E.ConnectionClosedError: (_UNAVAILABLE, "the connection is closed"),
    _E.ConnectionDrainingError: (_UNAVAILABLE, "the connection is draining"),
    _E.ConnectionReconnectingError: (_UNAVAILABLE, "the connection is reconnecting"),
    _E.NoServersError: (_UNAVAILABLE, "no NATS server could be reached"),
    _E.ServerNotInPoolError: (_UNAVAILABLE, "no NATS server could be reached"),
    _E.ProtocolError: (_UNAVAILABLE, "the server broke the NATS protocol"),
    _E.JsonParseError: (_UNAVAILABLE, "the server sent an INFO that is not JSON"),
    _E.SlowConsumerError: (_UNAVAILABLE, "messages were dropped: this client read too slowly"),
    _E.SecureConnRequiredError: (
        _UNAVAILABLE,
        "the server requires TLS; use a tls:// URL or set NATS_TLS_CA",
    ),
    _E.SecureConnWantedError: (
        _UNAVAILABLE,
        "TLS was asked for but the server does not offer it; use a nats:// URL",
    ),
    _E.SecureConnFailedError: (
        _UNAVAILABLE,
        "the TLS handshake failed; check NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY",
    ),
    _E.AuthorizationError: (
        AuthenticationError,
        "the server refused the credentials; check NATS_TOKEN, NATS_USER/NATS_PASSWORD, "
        "NATS_NKEY_SEED or NATS_CREDS",
    ),
    _E.InvalidUserCredentialsError: (
        AuthenticationError,
        "the credentials file is not valid; check NATS_CREDS",
    ),
    _E.BadSubjectError: (InvalidKeyError, "NATS refused the key as a subject"),
    _E.BadHeaderError: (
        PayloadError,
        "a header name is not valid in NATS (letters, digits and !#$%&'*+-.^_`|~ only)",
    ),
    _E.MaxPayloadError: (PayloadError, "the message is larger than the server's max_payload"),
    _E.MsgAlreadyAckdError: (DeliveryStateError, "the message was already settled"),
    _E.NotJSMessageError: (DeliveryStateError, "the message did not come from JetStream"),
    _E.BadSubscriptionError: (None, "misuse of nats-py: invalid subscription"),
    _E.BadTimeoutError: (None, "misuse of nats-py: invalid timeout"),
    _E.InvalidCallbackTypeError: (None, "misuse of nats-py: callbacks must be coroutines"),
    # --- nats.js.errors: JetStream -----------------------------------------------------------
    _JS.Error: (_UNAVAILABLE, "JetStream failed"),
    _JS.APIError: (AbeError, "JetStream refused the request"),
    _JS.ServiceUnavailableError: (
        _UNAVAILABLE,
        "JetStream is not available (not enabled, or still starting)",
    ),
    _JS.ServerError: (_UNAVAILABLE, "JetStream had an internal error"),
    _JS.NotFoundError: (_UNAVAILABLE, "JetStream does not know the stream or consumer"),
    _JS.BadRequestError: (AbeError, "JetStream refused the request"),
    _JS.NoStreamResponseError: (
        _UNAVAILABLE,
        "no stream answered the publish (JetStream starting, or the stream was deleted)",
    ),
    _JS.TooManyStalledMsgsError: (
        _UNAVAILABLE,
        "too many publishes are waiting for JetStream's acknowledgement",
    ),
    _JS.FetchTimeoutError: (_UNAVAILABLE, "JetStream did not answer the fetch in time"),
    _JS.ConsumerSequenceMismatchError: (None, "ordered push consumers are not used by abe"),
    _JS.ConsumerInvalidResetError: (None, "consumer resets are not used by abe"),
    _JS.BucketNotFoundError: (None, "key-value stores are not used by abe"),
    _JS.BadBucketError: (None, "key-value stores are not used by abe"),
    _JS.KeyValueError: (None, "key-value stores are not used by abe"),
    _JS.KeyDeletedError: (None, "key-value stores are not used by abe"),
    _JS.KeyNotFoundError: (None, "key-value stores are not used by abe"),
    _JS.KeyWrongLastSequenceError: (None, "key-value stores are not used by abe"),
    _JS.NoKeysError: (None, "key-value stores are not used by abe"),
    _JS.KeyHistoryTooLargeError: (None, "key-value stores are not used by abe"),
    _JS.KeyValueLimitMarkerTTLNotSupportedError: (None, "key-value stores are not used by abe"),
    _JS.InvalidKeyError: (None, "key-value stores are not used by abe"),
    _JS.InvalidBucketNameError: (None, "key-value and object stores are not used by abe"),
    _JS.InvalidObjectNameError: (None, "object stores are not used by abe"),
    _JS.BadObjectMetaError: (None, "object stores are not used by abe"),
    _JS.LinkIsABucketError: (None, "object stores are not used by abe"),
    _JS.DigestMismatchError: (None, "object stores are not used by abe"),
    _JS.ObjectNotFoundError: (None, "object stores are not used by abe"),
    _JS.ObjectDeletedError: (None, "object stores are not used by abe"),
    _JS.ObjectAlreadyExists: (None, "object stores are not used by abe"),
}
"""Each nats-py exception class and the abe error it becomes (None: left unchanged)."""

_AUTH_TEXT = (
    "authorization violation",
    "authentication expired",
    "authentication revoked",
    "invalid user credentials",
)
_CREDENTIALS_IN_URL = re.compile(r"(//)[^/@\s]*@")
_PAYLOAD_ERR_CODES = {10054, 10097}  # message size, and header size, over what is allowed
_NOT_STORED_ERR_CODES = {10077}  # "maximum messages exceeded" and other refusals to store


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # some nats-py errors cannot print themselves without their fields
        return ""


def is_auth_error(error: BaseException) -> bool:
    """Whether `error` says the server refused this client's credentials."""
    if isinstance(error, (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)):
        return True
    text = _text(error).lower()
    return isinstance(error, nats.errors.Error) and any(part in text for part in _AUTH_TEXT)


def safe_text(error: BaseException | None) -> str:
    """`error` as one short line, with any credentials in a URL replaced by ***."""
    if error is None:
        return ""
    text = _text(error) or type(error).__name__
    if not text.startswith("nats"):
        text = f"{type(error).__name__}: {text}"
    text = _CREDENTIALS_IN_URL.sub(r"\1***@", text.replace("\r", " ").replace("\n", " "))
    return text[:300]


def _lookup(error: BaseException) -> tuple[type[AbeError] | None, str] | None:
    for cls in type(error).__mro__:
        entry = ERROR_MAP.get(cls)
        if entry is not None:
            return entry
    return None


def translate(error: Exception, where: str) -> Exception:
    """The abe error for a client-library exception (`error` itself when there is none).

    `where` says which servers were involved (never with credentials).
    """
    if isinstance(error, AbeError):
        return error
    suffix = f" ({where})" if where else ""
    if is_auth_error(error):
        return AuthenticationError(
            f"nats: the server refused the credentials ({safe_text(error)}){suffix}; check "
            f"NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_NKEY_SEED or NATS_CREDS"
        )
    entry = _lookup(error)
    if isinstance(error, nats.js.errors.APIError) and entry is not None and entry[0] is not None:
        return _api_error(error, suffix)
    if entry is not None:
        target, reason = entry
        if target is None:
            return error
        return target(f"nats: {reason} ({safe_text(error)}){suffix}")
    if isinstance(error, ssl.SSLError):
        return BackendUnavailableError(
            f"nats: TLS failed ({safe_text(error)}){suffix}; check NATS_TLS_CA, NATS_TLS_CERT "
            f"and NATS_TLS_KEY"
        )
    if isinstance(error, (OSError, asyncio.TimeoutError)):
        return BackendUnavailableError(
            f"nats: cannot reach the server ({safe_text(error)}){suffix}"
        )
    return error


def _api_error(error: nats.js.errors.APIError, suffix: str) -> Exception:
    description = getattr(error, "description", None) or "no description"
    code, err_code = getattr(error, "code", None), getattr(error, "err_code", None)
    detail = f"{description} (code {code}, err_code {err_code})"
    if err_code in _PAYLOAD_ERR_CODES:
        return PayloadError(f"nats: JetStream refused the message: {detail}{suffix}")
    if err_code in _NOT_STORED_ERR_CODES:
        return AbeError(
            f"nats: JetStream did not store the message: {detail}{suffix}; the stream may be "
            f"full (limits with discard new)"
        )
    target, reason = _lookup(error) or (AbeError, "JetStream refused the request")
    return (target or AbeError)(f"nats: {reason}: {detail}{suffix}")
