"""Connections to RabbitMQ and the confirmed publisher. pika is imported only in the worker package."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from typing import Any

import pika
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import AMQPError, NackError, UnroutableError

from worker.topology import Topology, topology

log = logging.getLogger(__name__)

# What a caller catches to mean "the broker is not reachable right now".
BROKER_ERRORS: tuple[type[BaseException], ...] = (AMQPError, OSError)


class PublishFailed(Exception):
    """The broker did not take responsibility for a message (nacked or unroutable)."""


def connection_parameters(url: str | None = None) -> pika.URLParameters:
    params = pika.URLParameters(url or settings.AMQP_URL)
    params.heartbeat = settings.AMQP_HEARTBEAT
    # A broker under memory/disk alarm blocks publishers; fail instead of hanging forever.
    params.blocked_connection_timeout = 30
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.connection_attempts = 1
    params.client_properties = {"connection_name": f"orderpipe:{settings.ORDERPIPE_PREFIX}"}
    return params


def connect(url: str | None = None) -> BlockingConnection:
    return pika.BlockingConnection(connection_parameters(url))


# A failed probe is an answer (the caller reports it in one line), not an error: pika's own ERROR logs and
# tracebacks for that connection attempt are dropped, on the probing thread only.
_probing: contextvars.ContextVar[bool] = contextvars.ContextVar("orderpipe_amqp_probing", default=False)


class _DropWhileProbing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _probing.get()


for _name in (
    "pika.connection",
    "pika.channel",
    "pika.adapters.base_connection",
    "pika.adapters.blocking_connection",
    "pika.adapters.select_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.adapters.utils.selector_ioloop_adapter",
):
    logging.getLogger(_name).addFilter(_DropWhileProbing())


def probe(url: str | None = None, timeout: float = 2.0) -> None:
    """Open and close a short-lived connection to prove the broker answers the AMQP handshake within `timeout`
    seconds. Raises one of BROKER_ERRORS otherwise (see `describe_error`)."""
    params = pika.URLParameters(url or settings.AMQP_URL)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.client_properties = {"connection_name": f"orderpipe:{settings.ORDERPIPE_PREFIX}:probe"}
    token = _probing.set(True)
    try:
        conn = pika.BlockingConnection(params)
    finally:
        _probing.reset(token)
    with contextlib.suppress(*BROKER_ERRORS):
        conn.close()


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a connection failure (pika's AMQPConnectionError often has an empty message)."""
    cause: BaseException = exc
    # AMQPConnectionError(AMQPConnectionWorkflowFailed(exceptions=[..., AMQPConnectorSocketConnectError(...)]))
    if cause.args and isinstance(cause.args[0], BaseException):
        cause = cause.args[0]
    exceptions = getattr(cause, "exceptions", None)
    if exceptions:
        cause = exceptions[-1]
    name = type(cause).__name__
    # Some pika exceptions carry their reason only in repr().
    text = " ".join((str(cause) or repr(cause)).split())
    return text if text.startswith(name) else f"{name}: {text}"


class Publisher:
    """Publishes persistent JSON messages with publisher confirms and mandatory routing on one channel."""

    def __init__(self, connection: BlockingConnection, topo: Topology | None = None) -> None:
        self.connection = connection
        self.topology = topo or topology()
        self.channel: BlockingChannel = connection.channel()
        self.channel.confirm_delivery()

    def declare_topology(self) -> None:
        self.topology.declare(self.channel)

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        message_id: str,
        message_type: str,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Return once the broker has confirmed the message; raise PublishFailed if it refused it."""
        self.publish_raw(
            exchange=exchange,
            routing_key=routing_key,
            body=json.dumps(body).encode(),
            message_id=message_id,
            message_type=message_type,
            headers=headers,
        )

    def publish_raw(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        message_type: str,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Like `publish`, for a body already encoded (a message passed on to a retry tier or the dead letters)."""
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message_id,
            type=message_type,
            headers=headers or {},
        )
        try:
            self.channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                mandatory=True,
            )
        except UnroutableError as exc:
            raise PublishFailed(f"unroutable: no queue bound for {exchange!r}/{routing_key!r}") from exc
        except NackError as exc:
            raise PublishFailed("the broker nacked the message (queue full or rejecting publishes)") from exc

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except BROKER_ERRORS:
            pass
