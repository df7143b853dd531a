"""The publisher the sandbox's unsafe publish modes call from a web request (orders/sandbox/unsafe_accept.py).

One short-lived connection per message, with publisher confirms and mandatory routing: slow (a connection handshake
per order), but these modes exist to be watched failing, not to be fast, and a connection kept between requests
would miss its heartbeats in an idle web process and fail the next publish for a reason the lesson is not about.
Registered by worker/apps.py so that orders/ never imports pika.
"""

from __future__ import annotations

import contextlib
from typing import Any

from orders.sandbox.unsafe_accept import PublishError
from worker.broker import BROKER_ERRORS, Publisher, PublishFailed, connect, describe_error
from worker.topology import MESSAGE_TYPE, ROUTING_KEY, topology


def publish_order(body: dict[str, Any], message_id: str) -> None:
    """Publish one `order.placed` message and wait for the broker's confirm; raises PublishError otherwise."""
    topo = topology()
    try:
        connection = connect()
    except BROKER_ERRORS as exc:
        raise PublishError(f"RabbitMQ unreachable: {describe_error(exc)}") from None
    try:
        Publisher(connection, topo).publish(
            exchange=topo.exchange,
            routing_key=ROUTING_KEY,
            body=body,
            message_id=message_id,
            message_type=MESSAGE_TYPE,
        )
    except PublishFailed as exc:
        raise PublishError(str(exc)) from None
    except BROKER_ERRORS as exc:
        raise PublishError(f"RabbitMQ connection lost: {describe_error(exc)}") from None
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            connection.close()
