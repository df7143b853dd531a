"""Connections to RabbitMQ and the confirmed publisher. pika is imported only in the worker package."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
from django.conf import settings
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import AMQPConnectionError, AMQPError, NackError, UnroutableError

from worker.topology import Topology, topology

log = logging.getLogger(__name__)

# What a caller catches to mean "the broker is not reachable right now".
BROKER_ERRORS: tuple[type[Exception], ...] = (AMQPError, OSError)


class PublishFailed(Exception):
    """The broker did not take responsibility for a message (nacked or unroutable)."""


class ConfirmTimeout(AMQPError):
    """A window's confirms did not all come within CONFIRM_TIMEOUT: the broker is out of reach in all but name."""


# How long `Publisher.publish_many` waits for a window's confirms. A broker that blocks publishers (memory or disk
# alarm) is already given up on after `blocked_connection_timeout` (30 s, below); this bounds every other stall.
CONFIRM_TIMEOUT = 30.0


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
    """(host, port) of the node a connection was opened to, or None if pika no longer says."""
    params = _PikaInternals.parameters(conn)
    return (params.host, params.port) if params is not None else None


class _PikaInternals:
    """The two private pika names this project uses, and only here. pika has no public accessor for either;
    worker/tests/test_broker_internals.py checks both on the installed pika against the real broker."""

    @staticmethod
    def parameters(conn: BlockingConnection) -> pika.connection.Parameters | None:
        """The parameters that succeeded, which pika keeps on the connection a BlockingConnection wraps."""
        params = getattr(getattr(conn, "_impl", None), "params", None)
        return params if isinstance(params, pika.connection.Parameters) else None

    @staticmethod
    def channel(blocking: BlockingChannel) -> pika.channel.Channel:
        """The asynchronous Channel a BlockingChannel wraps."""
        channel = getattr(blocking, "_impl", None)
        if not isinstance(channel, pika.channel.Channel):
            raise TypeError(f"this pika ({pika.__version__}) has no Channel inside BlockingChannel")
        return channel


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


def _properties(message_id: str, message_type: str, headers: dict[str, Any] | None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        type=message_type,
        headers=headers or {},
    )


@dataclass(frozen=True)
class Message:
    """One message of a window (`Publisher.publish_many`)."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    message_id: str
    message_type: str
    headers: dict[str, Any] | None = None


class Publisher:
    """Publishes persistent JSON messages with publisher confirms and mandatory routing: `publish` one at a time on
    `channel` (it returns once the broker confirmed the message), `publish_many` a window at a time on a second
    channel of the same connection (one wait for all the window's confirms)."""

    def __init__(self, connection: BlockingConnection, topo: Topology | None = None) -> None:
        self.connection = connection
        self.topology = topo or topology()
        self.channel: BlockingChannel = connection.channel()
        self.channel.confirm_delivery()
        self._window: _ConfirmWindow | None = None

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
        try:
            self.channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=_properties(message_id, message_type, headers),
                mandatory=True,
            )
        except UnroutableError as exc:
            raise PublishFailed(_unroutable(exchange, routing_key)) from exc
        except NackError as exc:
            raise PublishFailed(NACKED) from exc

    def publish_many(self, messages: Sequence[Message], *, timeout: float = CONFIRM_TIMEOUT) -> list[Exception | None]:
        """Publish every message, then wait once for all their confirms. Returns one verdict per message, in order:
        None when the broker confirmed it, PublishFailed when it returned it (unroutable) or nacked it, or the
        broker error (one of BROKER_ERRORS) that closed the connection or channel before its confirm came. Each
        verdict is the message's own: a refused message does not undo the others' confirms. Message ids must be
        unique within a window (a basic.return names its message only by its properties)."""
        if not messages:
            return []
        if self.connection.is_closed:  # lost as the previous window settled: say so rather than "no channel"
            return [AMQPConnectionError("the connection to RabbitMQ is closed")] * len(messages)
        if self._window is None:
            try:
                self._window = _ConfirmWindow(self.connection, timeout)
            except BROKER_ERRORS as exc:
                return [exc] * len(messages)
        window = self._window
        try:
            return window.publish(messages, timeout)
        finally:
            if window.broken:
                # Confirms still owed to this channel would be counted against the next window's tags.
                self._window = None
                window.close()

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except BROKER_ERRORS:
            pass


NACKED = "the broker nacked the message (queue full or rejecting publishes)"


def _unroutable(exchange: str, routing_key: str) -> str:
    return f"unroutable: no queue bound for {exchange!r}/{routing_key!r}"


class _ConfirmWindow:
    """A channel in confirm mode whose confirms are counted as they come instead of awaited one by one.

    BlockingChannel waits for each confirm inside `basic_publish` and has no public way to publish without waiting.
    The pika Channel it wraps (private: `_PikaInternals.channel`) has: `confirm_delivery`
    with an ack/nack callback, `add_on_return_callback` and a `basic_publish` that only queues the frames, which is
    pika's asynchronous API as its asynchronous publisher example uses it. Everything still runs on the caller's
    one BlockingConnection (its failover, heartbeats and queue monitor unchanged), driven by its public
    `process_data_events`; a SelectConnection or aio-pika would mean a second connection per relay to keep alive
    and fail over.

    The broker numbers a confirm-mode channel's publishes 1, 2, 3 ... (the delivery tags its acks and nacks carry);
    `multiple` settles every tag up to the one named. A mandatory message that no queue takes comes back as a
    basic.return before its ack (RabbitMQ's ordering guarantee), matched to its message by message_id.
    """

    def __init__(self, connection: BlockingConnection, timeout: float) -> None:
        self.connection = connection
        self.blocking = connection.channel()
        self.channel = _PikaInternals.channel(self.blocking)
        self.published = 0
        self.pending: dict[int, int] = {}  # delivery tag -> index in the window
        self.returned: set[int] = set()  # indexes
        self.messages: Sequence[Message] = ()
        self.indexes: dict[str, int] = {}  # message_id -> index
        self.settled: set[int] = set()  # indexes confirmed, returned or nacked
        self.verdicts: list[Exception | None] = []
        self.closed: Exception | None = None
        self.broken = False
        self.channel.add_on_close_callback(self._on_close)
        self.channel.add_on_return_callback(self._on_return)
        selected: list[pika.frame.Method] = []

        def on_select_ok(frame: pika.frame.Method) -> None:
            selected.append(frame)
            self._wake()

        self.channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=on_select_ok)
        self._wait(lambda: bool(selected), timeout)

    def publish(self, messages: Sequence[Message], timeout: float) -> list[Exception | None]:
        self.indexes = {message.message_id: index for index, message in enumerate(messages)}
        if len(self.indexes) != len(messages):
            raise ValueError("publish_many: message ids must be unique within a window")
        self.messages = messages
        self.returned, self.settled = set(), set()
        self.verdicts = [None] * len(messages)
        lost: Exception | None = None
        try:
            for index, message in enumerate(messages):
                self.channel.basic_publish(
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    body=json.dumps(message.body).encode(),
                    properties=_properties(message.message_id, message.message_type, message.headers),
                    mandatory=True,
                )
                self.published += 1
                self.pending[self.published] = index
            self._wait(lambda: not self.pending, timeout)
        except BROKER_ERRORS as exc:
            lost = self.closed or exc  # the broker's reason for closing the channel says more than pika's
        # Published and never confirmed, or never published once the channel failed: the caller tries them again.
        unsettled = [index for index in range(len(messages)) if index not in self.settled]
        for index in unsettled:
            self.verdicts[index] = lost or ConfirmTimeout("no confirm")
        self.broken = lost is not None or bool(unsettled)
        self.pending = {}
        return self.verdicts

    def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.closed is not None:
                raise self.closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeout(f"no confirm within {timeout:g} s")
            process_data_events(self.connection, remaining)

    def _wake(self) -> None:
        # process_data_events returns early only for the BlockingConnection's own events (timers, channel events),
        # not for callbacks on the wrapped channel: a zero-delay timer ends its wait as soon as the window settles.
        self.connection.call_later(0, _nothing)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tags = [tag for tag in self.pending if tag <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            index = self.pending.pop(tag, None)
            if index is None:
                continue
            self.settled.add(index)
            if nacked:
                self.verdicts[index] = PublishFailed(NACKED)
            elif index in self.returned:
                message = self.messages[index]
                self.verdicts[index] = PublishFailed(_unroutable(message.exchange, message.routing_key))
        if not self.pending:
            self._wake()

    def _on_return(
        self, _channel: Any, method: pika.spec.Basic.Return, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        index = self.indexes.get(properties.message_id or "")
        if index is not None:
            self.returned.add(index)

    def _on_close(self, _channel: Any, reason: Exception) -> None:
        self.closed = reason
        self._wake()

    def close(self) -> None:
        with contextlib.suppress(*BROKER_ERRORS):
            if self.blocking.is_open:
                self.blocking.close()


def _nothing() -> None:
    pass
