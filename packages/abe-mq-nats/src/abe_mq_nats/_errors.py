"""nats-py's exceptions as abe errors, in one table looked up along the MRO; JetStream's
refusals (`APIError` and subclasses) are told apart by `err_code` first."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable

import nats.errors as E
import nats.js.errors as JS

from abe.errors import AbeError, DeliveryStateError
from abe.provider import ErrorMap, ErrorRule, auth, invalid_key, passthrough, payload, unavailable

__all__ = ["ERRORS", "refused_credentials"]

_REFUSED = "the server refused the credentials; check NATS_TOKEN, NATS_USER/NATS_PASSWORD, "
_REFUSED += "NATS_NKEY_SEED or NATS_CREDS"
_TLS = "check NATS_TLS_CA, NATS_TLS_CERT and NATS_TLS_KEY"
_DOWN = "check that the NATS server is up and reachable"
_SAYS_REFUSED = re.compile(r"(?i)authorization violation|authentication (expired|revoked)")


def refused_credentials(error: BaseException) -> bool:
    """Whether `error` says the server refused this client's credentials."""
    if isinstance(error, (E.AuthorizationError, E.InvalidUserCredentialsError)):
        return True
    text = str(error) if isinstance(error, E.Error) else ""
    return _SAYS_REFUSED.search(text) is not None or "invalid user credentials" in text.lower()


def _err_code(*codes: int) -> Callable[[BaseException], bool]:
    return lambda error: getattr(error, "err_code", None) in codes


def _api(rule: ErrorRule) -> tuple[ErrorRule, ...]:
    """`rule` for a JetStream refusal, unless its err_code says the message was refused."""
    full = "JetStream did not store the message; the stream may be full (limits, discard new)"
    refused = payload("JetStream refused the message", when=_err_code(10054, 10097))
    return refused, ErrorRule(AbeError, full, when=_err_code(10077)), rule


ERRORS = ErrorMap(
    "nats",
    {
        E.Error: (auth(_REFUSED, when=refused_credentials), unavailable(_DOWN)),
        E.TimeoutError: unavailable("NATS did not answer in time"),
        E.NoRespondersError: unavailable("nothing answered the request (is JetStream on?)"),
        E.StaleConnectionError: unavailable("the connection went stale"),
        E.SecureConnRequiredError: unavailable("the server requires TLS; use a tls:// URL"),
        E.SecureConnWantedError: unavailable(
            "TLS was asked for (a tls:// URL in NATS_URL, or NATS_TLS_CA / NATS_TLS_CERT / "
            "NATS_TLS_KEY), but the server did not offer it, so nothing was sent to it (no "
            "credentials either); enable TLS on the server, or, on a trusted network only, use "
            "a nats:// URL and unset NATS_TLS_*"
        ),
        E.SecureConnFailedError: unavailable(f"the TLS handshake failed; {_TLS}"),
        E.AuthorizationError: auth(_REFUSED),
        E.InvalidUserCredentialsError: auth("the credentials file is not valid; check NATS_CREDS"),
        E.BadSubjectError: invalid_key("NATS refused the key as a subject"),
        E.BadHeaderError: payload("a header name is not valid in NATS"),
        E.MaxPayloadError: payload("the message is larger than the server's max_payload"),
        E.MsgAlreadyAckdError: ErrorRule(DeliveryStateError, "the message was already settled"),
        E.NotJSMessageError: ErrorRule(DeliveryStateError, "not a JetStream message"),
        E.BadSubscriptionError: passthrough(),  # misuses of nats-py: bugs to report
        E.BadTimeoutError: passthrough(),
        E.InvalidCallbackTypeError: passthrough(),
        JS.Error: unavailable("JetStream failed"),
        JS.APIError: _api(ErrorRule(AbeError, "JetStream refused the request")),
        JS.ServiceUnavailableError: _api(unavailable("JetStream is not available (starting?)")),
        JS.ServerError: _api(unavailable("JetStream had an internal error")),
        JS.NotFoundError: _api(unavailable("JetStream does not know the stream or consumer")),
        JS.NoStreamResponseError: unavailable(
            "no stream answered the publish (JetStream starting, or the stream was deleted)"
        ),
        ssl.SSLError: unavailable(f"TLS failed; {_TLS}"),
        OSError: unavailable(f"cannot reach the server; {_DOWN}"),
        asyncio.TimeoutError: unavailable(f"cannot reach the server; {_DOWN}"),
    },
)
"""Each nats-py exception class (and the socket's, beneath it) and the abe error it becomes."""
