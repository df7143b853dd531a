"""Connections to RabbitMQ and the confirmed publisher. pika is imported only in the worker package."""

from __future__ import annotations

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
                body=json.dumps(body).encode(),
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
