"""The one table that turns aio-pika's and aiormq's exceptions into abe's.

abe-core passes every exception a hook raises through it (along the class hierarchy, the
cause chained, secrets scrubbed); tests/test_errors.py checks that none is missing.
"""

from __future__ import annotations

import asyncio

from abe.provider import ErrorMap, auth, invalid_key, passthrough, payload, unavailable
from aio_pika import exceptions as amqp
from aiormq import exceptions as aiormq_errors

__all__ = ["ERRORS"]

_UNREACHABLE = "cannot reach RabbitMQ; check RABBITMQ_URL and that the broker is up"

ERRORS = ErrorMap(
    "rabbitmq",
    {
        amqp.AuthenticationError: auth("RabbitMQ refused the login; check RABBITMQ_URL"),
        amqp.ProbableAuthenticationError: auth(
            "RabbitMQ closed the connection at login: check the user name and password in "
            "RABBITMQ_URL"
        ),
        aiormq_errors.ConnectionNotAllowed: auth(
            "RabbitMQ refused the virtual host; check the vhost in RABBITMQ_URL (and that the "
            "user may use it)"
        ),
        aiormq_errors.ChannelAccessRefused: auth(
            "RabbitMQ refused access (names starting amq. are the broker's, or the user lacks "
            "permissions on this vhost)"
        ),
        amqp.ChannelPreconditionFailed: invalid_key(
            "RabbitMQ has a queue or exchange of this name declared otherwise (not abe's)"
        ),
        amqp.IncompatibleProtocolError: unavailable(
            "the server does not speak AMQP 0-9-1; check RABBITMQ_URL (amqps:// for a TLS port)"
        ),
        amqp.DeliveryError: payload("RabbitMQ refused the message"),
        amqp.ChannelInvalidStateError: unavailable("the channel closed; it reconnects by itself"),
        amqp.ChannelClosed: unavailable("RabbitMQ closed the channel"),
        amqp.ConnectionClosed: unavailable("the connection to RabbitMQ closed"),
        amqp.AMQPConnectionError: [
            unavailable(
                "the TLS handshake failed: does RabbitMQ speak TLS on this port (else use "
                "amqp://), and does it trust this client?",
                when=lambda error: "SSL" in str(error),
            ),
            unavailable(_UNREACHABLE),
        ],
        amqp.InvalidFrameError: [
            auth(
                "RabbitMQ refused to open the connection: check that the virtual host in "
                "RABBITMQ_URL (its path) exists and that the user may use it",
                when=lambda error: "Connection.Close" in str(error),
            ),
            unavailable("the reply is not AMQP 0-9-1; check RABBITMQ_URL"),
        ],
        amqp.AMQPError: unavailable("RabbitMQ refused a command"),
        amqp.MessageProcessError: passthrough(),
        amqp.QueueEmpty: passthrough(),
        asyncio.TimeoutError: unavailable(
            "RabbitMQ did not answer in time; check that it is up, or raise "
            "ABE_MQ_OPERATION_TIMEOUT"
        ),
        TimeoutError: unavailable(
            "RabbitMQ did not answer in time; check that it is up, or raise "
            "ABE_MQ_OPERATION_TIMEOUT"
        ),
        OSError: unavailable(_UNREACHABLE),
    },
)
