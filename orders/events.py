"""An order's journey: every transition appends an OrderEvent with a snapshot of the database row, the message
and queue state, and the Redis entry at that moment. This module builds the snapshots and counts committed events;
the rows themselves are written by `orders.journal`."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, TypedDict

from django.db import transaction
from django.utils import timezone

from orders import journal, metrics
from orders.cache import CacheState
from orders.models import EventKind, Notification, Order, OrderEvent, OutboxMessage, Payment, Product


class RowSnapshot(TypedDict, total=False):
    """Another row the step wrote, as the step left it: its table, primary key, the columns worth showing (JSON
    values), a note for what the columns cannot say (a stock decrement's size), and whether the row was there before
    the order (a product: the page says "written", not "new row", where the journey shows it first)."""

    table: str
    id: str
    fields: dict[str, Any]
    note: str
    existed: bool


class DbSnapshot(TypedDict):
    """The order row as the step left it (flat, the journey's first panel), and the other rows the step wrote."""

    table: str
    id: str
    status: str
    step: str
    attempts: int
    version: int
    total: str
    failure_reason: str
    updated_at: str
    completed_at: str
    result: dict[str, Any] | None
    rows: list[RowSnapshot]


class QueueSnapshot(TypedDict, total=False):
    exchange: str
    routing_key: str
    queue: str
    message_id: str
    delivery_tag: int | None
    redelivered: bool
    delivery_count: int
    queue_ready: int | None
    outbox_id: int
    retries: int
    note: str
    # Where the message is handed on to, at a retry or a dead letter (worker/processing.py builds these).
    from_queue: str
    ttl_ms: int
    back_at: str
    headers: dict[str, str]
    watched_via: str
    delivery_limit: int
    # The worker that took the delivery (its heartbeat name).
    worker: str


class Snapshot(TypedDict):
    db: DbSnapshot
    queue: QueueSnapshot | dict[str, Any]
    cache: CacheState | dict[str, Any]


def db_snapshot(order: Order, rows: list[RowSnapshot] | None = None) -> DbSnapshot:
    return {
        "table": "orders_order",
        "id": str(order.id),
        "status": order.status,
        "step": order.step,
        "attempts": order.attempts,
        "version": order.version,
        "total": str(order.total),
        "failure_reason": order.failure_reason,
        "updated_at": order.updated_at.isoformat() if order.updated_at else "",
        "completed_at": order.completed_at.isoformat() if order.completed_at else "",
        "result": order.result,
        "rows": rows or [],
    }


# The other rows a step writes, snapshotted because each changes later or belongs to the step: an outbox row is
# updated when it is published, a product's stock by every other order; a payment and a notification never change,
# but they are written by one step and shown as that step left them, so they are snapshotted too (from the instance
# the step holds: no query).


def outbox_row(outbox: OutboxMessage) -> RowSnapshot:
    return {
        "table": OutboxMessage._meta.db_table,
        "id": str(outbox.pk or ""),  # the fast path fills it in (journal.accept), the id being drawn there
        "fields": {
            "message_type": outbox.message_type,
            "routing_key": outbox.routing_key,
            "sent_at": outbox.sent_at.isoformat() if outbox.sent_at else None,
            "publish_attempts": outbox.publish_attempts,
            "last_error": outbox.last_error,
        },
    }


def product_row(product_id: int, sku: str, stock: int, change: int) -> RowSnapshot:
    return {
        "table": Product._meta.db_table,
        "id": str(product_id),
        "fields": {"sku": sku, "stock": stock},
        "note": f"stock {change:+d}",
        "existed": True,
    }


def payment_row(payment: Payment) -> RowSnapshot:
    return {
        "table": Payment._meta.db_table,
        "id": str(payment.pk),
        "fields": {
            "amount": str(payment.amount),
            "gateway_reference": payment.gateway_reference,
            "created_at": payment.created_at.isoformat(),
        },
    }


def notification_row(notification: Notification) -> RowSnapshot:
    return {
        "table": Notification._meta.db_table,
        "id": str(notification.pk),
        "fields": {
            "channel": notification.channel,
            "recipient": notification.recipient,
            "subject": notification.subject,
            "sent_at": notification.sent_at.isoformat(),
        },
    }


def record_event(
    order: Order,
    kind: EventKind,
    message: str,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
    rows: list[RowSnapshot] | None = None,
    log_level: int = logging.INFO,
) -> OrderEvent:
    """Append an event to the order's journey (one statement, `journal.append`).

    Call inside the transaction that made the change, with the order row locked (select_for_update or a guarded
    UPDATE): the lock is what keeps `seq` gap-free and unique when a relay and a worker touch the same order.
    """
    snapshot = make_snapshot(order, queue=queue, cache=cache, rows=rows)
    at = timezone.now()
    row = journal.append(order, kind, message, dict(snapshot), at=at)
    event = stored_event(order, pk=row.pk, seq=row.seq, kind=kind, at=at, message=message, snapshot=snapshot)
    count_on_commit(order, event, previous_at=row.previous_at, log_level=log_level)
    return event


def record_event_reference(
    order: Order,
    kind: EventKind,
    message: str,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
    rows: list[RowSnapshot] | None = None,
) -> OrderEvent:
    """`record_event`, the readable way (`journal.append_reference`): the same row, written with the ORM."""
    snapshot = make_snapshot(order, queue=queue, cache=cache, rows=rows)
    event, previous_at = journal.append_reference(order, kind, message, dict(snapshot))
    count_on_commit(order, event, previous_at=previous_at)
    return event


def make_snapshot(
    order: Order,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
    rows: list[RowSnapshot] | None = None,
) -> Snapshot:
    return {
        "db": db_snapshot(order, rows),
        "queue": queue or {},
        "cache": cache or {"note": "written after the transaction commits"},
    }


def stored_event(
    order: Order, *, pk: int, seq: int, kind: EventKind, at: Any, message: str, snapshot: Any
) -> OrderEvent:
    """The OrderEvent instance for a row just inserted with SQL (as if read back, without reading it)."""
    event = journal.loaded(
        OrderEvent(id=pk, order=order, seq=seq, kind=kind, at=at, message=message, snapshot=snapshot)
    )
    event.order = order  # the instance the caller holds, so event.order needs no query
    return event


def count_on_commit(order: Order, event: OrderEvent, *, previous_at: Any = None, log_level: int = logging.INFO) -> None:
    """Count and log the event (at `log_level`) once its transaction commits, so rolled-back work never shows up;
    robust: a metrics or logging failure must not turn a committed transition into an error for the caller."""
    transaction.on_commit(
        partial(
            metrics.event_committed,
            order_id=str(order.id),
            kind=str(event.kind),
            seq=event.seq,
            at=event.at,
            previous_at=previous_at or order.created_at or event.at,
            created_at=order.created_at,
            log_level=log_level,
        ),
        robust=True,
    )


def attach_cache_state(event: OrderEvent, state: CacheState) -> None:
    """Fill in the cache part of an event's snapshot once the post-commit cache write has happened."""
    event.snapshot["cache"] = state
    journal.set_cache_state(event.pk, dict(state))
