"""Connections to RabbitMQ and the confirmed publisher. pika is imported only in the worker package."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import random
from typing import Any

import pika
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import AMQPConnectionError, AMQPError, NackError, UnroutableError

from worker.topology import Topology, topology

log = logging.getLogger(__name__)

# What a caller catches to mean "the broker is not reachable right now".
BROKER_ERRORS: tuple[type[BaseException], ...] = (AMQPError, OSError)


class PublishFailed(Exception):
    """The broker did not take responsibility for a message (nacked or unroutable)."""


def node_urls(url: str | None = None) -> list[str]:
    """The broker nodes to try: `url` if given (one URL, or several comma-separated), else settings.AMQP_URLS."""
    if url is None:
        return list(settings.AMQP_URLS)
    return [part.strip() for part in url.split(",") if part.strip()]


# The node this process was last connected to, as (host, port). When that connection is lost the node has most
# likely died or been stopped, so the next connect tries it last instead of waiting on it first.
_last_node: tuple[str, int] | None = None


def _address(url: str) -> tuple[str, int]:
    params = pika.URLParameters(url)
    return params.host, params.port


def _connection_order(urls: list[str]) -> list[str]:
    """The nodes in random order (so that clients and their reconnections spread over the cluster), with the one
    we were last connected to at the end."""
    order = random.sample(urls, len(urls))
    order.sort(key=lambda url: _address(url) == _last_node)
    return order


def connection_parameters(url: str | None = None) -> pika.URLParameters:
    """Parameters for one node (the first of `url`/AMQP_URL when several are named)."""
    params = pika.URLParameters(node_urls(url)[0])
    params.heartbeat = settings.AMQP_HEARTBEAT
    # A broker under memory/disk alarm blocks publishers; fail instead of hanging forever.
    params.blocked_connection_timeout = 30
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.connection_attempts = 1
    # The pid tells the relay's connection from the workers' (`rabbitmqctl list_connections client_properties`, the UI).
    params.client_properties = {"connection_name": f"orderpipe:{settings.ORDERPIPE_PREFIX}:{os.getpid()}"}
    return params


def connect(url: str | None = None) -> BlockingConnection:
    """Connect to the first node that answers. With several nodes, each gets one attempt in turn (pika takes
    `connection_attempts` of the last parameters for the whole list) and a shorter socket timeout: a node that
    does not answer within 2 s is skipped for the next one rather than waited on."""
    global _last_node
    urls = _connection_order(node_urls(url))
    candidates = [connection_parameters(node) for node in urls]
    if len(candidates) > 1:
        for params in candidates:
            params.socket_timeout = 2
    conn = pika.BlockingConnection(candidates)
    _last_node = connected_node(conn)
    if len(candidates) > 1 and _last_node is not None:
        log.info("connected to RabbitMQ node %s:%s", *_last_node)
    return conn


def connected_node(conn: BlockingConnection) -> tuple[str, int] | None:
    """(host, port) of the node a connection was opened to. pika keeps the parameters that succeeded on the
    connection it wraps (`_impl.params`); there is no public accessor."""
    params = getattr(getattr(conn, "_impl", None), "params", None)
    return (params.host, params.port) if params is not None else None


def process_data_events(conn: BlockingConnection, time_limit: float) -> None:
    """`conn.process_data_events`, raising AMQPConnectionError (one of BROKER_ERRORS) when the connection is
    already closed. When a node dies, whichever call reads the reset first gets the StreamLostError; if that call
    swallowed it (a best-effort queue-depth poll does), pika's next `process_data_events` raises
    ValueError('Timeout closed before call') instead (pika#1291), which would end the process rather than
    reconnect it to another node."""
    if conn.is_closed:
        raise AMQPConnectionError("the connection to RabbitMQ is closed")
    conn.process_data_events(time_limit=time_limit)


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
    seconds: with several nodes, any one of them (each gets its share of the time). Raises one of BROKER_ERRORS
    otherwise (see `describe_error`)."""
    urls = _connection_order(node_urls(url))
    share = timeout / len(urls)
    candidates = []
    for node in urls:
        params = pika.URLParameters(node)
        params.connection_attempts = 1
        params.socket_timeout = share
        params.stack_timeout = share
        params.blocked_connection_timeout = share
        params.client_properties = {"connection_name": f"orderpipe:{settings.ORDERPIPE_PREFIX}:probe"}
        candidates.append(params)
    token = _probing.set(True)
    try:
        conn = pika.BlockingConnection(candidates)
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
