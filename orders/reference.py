"""The readable twins of the accept and transition paths: one ORM query per row, the way to learn what is written.

`services.order_create` and `services.transition_order` write the same rows in one statement each
(orders/journal.py); orders/tests/test_journal.py pins each pair to the same result.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from orders import cache
from orders.events import QueueSnapshot, RowSnapshot, outbox_row, record_event_reference
from orders.models import EventKind, Order, OrderStatus, OutboxMessage, allowed_sources
from orders.services import (
    InvalidTransition,
    Transition,
    attach_lines,
    insert_order_and_lines,
    order_message,
    outbox_channel,
)


def order_create_reference(*, customer_email: str, items: list[dict[str, Any]], note: str = "") -> Order:
    """Accept an order, the readable way: price its lines from the catalog and store the order, its lines, an
    outbox message and the first journey event in one transaction. The commit's NOTIFY wakes the relay."""
    with transaction.atomic():
        order, lines = insert_order_and_lines(customer_email=customer_email, items=items, note=note)
        outbox = OutboxMessage.objects.create(order=order, payload=order_message(order))
        record_event_reference(
            order,
            EventKind.ACCEPTED,
            f"Accepted by the API: {len(items)} line(s), total {order.total}. Stored with outbox message #{outbox.id}.",
            queue={"note": "not published yet: waiting in the outbox table", "outbox_id": outbox.id},
            cache={"key": cache.order_key(order.id), "present": False, "note": "not cached yet"},
            rows=[outbox_row(outbox)],
        )
        with connection.cursor() as cursor:
            # Delivered at commit, and only if the transaction commits.
            cursor.execute("SELECT pg_notify(%s, %s)", [outbox_channel(), str(outbox.id)])
    return attach_lines(order, lines)


def transition_reference(
    order: Order,
    *,
    to: OrderStatus,
    kind: EventKind,
    message: str,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    rows: list[RowSnapshot] | None = None,
    **changes: Any,
) -> Transition:
    """Move a locked order to `to` and record the event, the readable way: a guarded ORM update, then the event.
    `services.transition_order` does the same in one statement."""
    if order.status not in allowed_sources(to):
        raise InvalidTransition(f"{order.status} -> {to} is not an allowed transition")
    now = timezone.now()
    updated = Order.objects.filter(pk=order.pk, status=order.status, version=order.version).update(
        status=to, version=F("version") + 1, updated_at=now, **changes
    )
    if updated != 1:
        raise InvalidTransition(f"order {order.pk} changed under us")
    order.status, order.version, order.updated_at = to, order.version + 1, now
    for name, value in changes.items():
        setattr(order, name, value)
    event = record_event_reference(order, kind, message, queue=queue, rows=rows)
    return Transition(order=order, event=event)


def load_order(order_id: uuid.UUID | str) -> Order:
    """An order read back with its lines, as a later request would read it."""
    return Order.objects.prefetch_related("lines").get(pk=order_id)
