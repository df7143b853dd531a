"""Poison messages on demand: one message no worker can process, published as a broken producer would (the
dashboard's "Send a poison message" story control, orderpipe/dashboard/outages.py)."""

from __future__ import annotations

import json
import uuid

from orders.services import MESSAGE_VERSION
from worker.broker import BROKER_ERRORS, Publisher, PublishFailed, connect
from worker.topology import MESSAGE_TYPE, ROUTING_KEY

POISON_FAILURES: tuple[type[BaseException], ...] = (*BROKER_ERRORS, PublishFailed)
POISON_KINDS = {
    "undecodable": lambda: b"{this is not JSON",
    "unknown_order": lambda: json.dumps({"order_id": str(uuid.uuid4()), "version": MESSAGE_VERSION}).encode(),
    "wrong_version": lambda: json.dumps({"order_id": str(uuid.uuid4()), "version": 999}).encode(),
}


def publish_poison(kind: str = "undecodable") -> str:
    """Publish one message no worker can process to the main exchange, as a foreign or broken producer would.
    A worker rejects it to the dead-letter queue with an `x-orderpipe-reason` header and carries on.
    Returns the message id."""
    conn = connect()
    try:
        publisher = Publisher(conn)
        message_id = f"poison-{uuid.uuid4().hex[:8]}"
        publisher.publish_raw(
            exchange=publisher.topology.exchange,
            routing_key=ROUTING_KEY,
            body=POISON_KINDS[kind](),
            message_id=message_id,
            message_type=MESSAGE_TYPE,
        )
        return message_id
    finally:
        if conn.is_open:
            conn.close()
