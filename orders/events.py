"""An order's journey: every transition appends an OrderEvent with a snapshot of the database row, the message
and queue state, and the Redis entry at that moment."""

from __future__ import annotations

import json
from functools import partial
from typing import Any, TypedDict

from django.db import connection, transaction
from django.utils import timezone

from orders import metrics
from orders.cache import CacheState
from orders.models import EventKind, Order, OrderEvent


class DbSnapshot(TypedDict):
    table: str
    id: str
    status: str
    step: str
    attempts: int
    version: int
    total: str
    failure_reason: str
    updated_at: str


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
    note: str


class Snapshot(TypedDict):
    db: DbSnapshot
    queue: QueueSnapshot | dict[str, Any]
    cache: CacheState | dict[str, Any]


def db_snapshot(order: Order) -> DbSnapshot:
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
    }


# One round trip per event: the next `seq` and the previous event's time (for the step-duration metric) are read
# by the INSERT itself. The caller's lock on the order row orders concurrent appends (see record_event).
_APPEND = f"""
WITH previous AS (
    SELECT COALESCE(MAX(seq), 0) AS seq, MAX(at) AS at FROM {OrderEvent._meta.db_table} WHERE order_id = %(order)s
)
INSERT INTO {OrderEvent._meta.db_table} (order_id, seq, kind, at, message, snapshot)
SELECT %(order)s, previous.seq + 1, %(kind)s, %(at)s, %(message)s, %(snapshot)s::jsonb FROM previous
RETURNING id, seq, (SELECT at FROM previous)
"""


def record_event(
    order: Order,
    kind: EventKind,
    message: str,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
) -> OrderEvent:
    """Append an event to the order's journey.

    Call inside the transaction that made the change, with the order row locked (select_for_update or a guarded
    UPDATE): the lock is what keeps `seq` gap-free and unique when a relay and a worker touch the same order.
    """
    snapshot = make_snapshot(order, queue=queue, cache=cache)
    at = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _APPEND,
            {"order": order.id, "kind": str(kind), "at": at, "message": message, "snapshot": json.dumps(snapshot)},
        )
        pk, seq, previous_at = cursor.fetchone()
    event = stored_event(order, pk=pk, seq=seq, kind=kind, at=at, message=message, snapshot=snapshot)
    count_on_commit(order, event, previous_at=previous_at)
    return event


def make_snapshot(
    order: Order,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
) -> Snapshot:
    return {
        "db": db_snapshot(order),
        "queue": queue or {},
        "cache": cache or {"note": "written after the transaction commits"},
    }


def stored_event(
    order: Order, *, pk: int, seq: int, kind: EventKind, at: Any, message: str, snapshot: Any
) -> OrderEvent:
    """The OrderEvent instance for a row just inserted with SQL."""
    event = OrderEvent(id=pk, order=order, seq=seq, kind=kind, at=at, message=message, snapshot=snapshot)
    event._state.adding, event._state.db = False, connection.alias
    return event


def count_on_commit(order: Order, event: OrderEvent, *, previous_at: Any = None) -> None:
    """Count and log the event once its transaction commits, so rolled-back work never shows up; robust: a metrics
    or logging failure must not turn a committed transition into an error for the caller."""
    transaction.on_commit(
        partial(
            metrics.event_committed,
            order_id=str(order.id),
            kind=str(event.kind),
            seq=event.seq,
            at=event.at,
            previous_at=previous_at or order.created_at or event.at,
            created_at=order.created_at,
        ),
        robust=True,
    )


def attach_cache_state(event: OrderEvent, state: CacheState) -> None:
    """Fill in the cache part of an event's snapshot once the post-commit cache write has happened."""
    event.snapshot["cache"] = state
    # Only the cache part travels (jsonb_set), not the whole snapshot again.
    update = f"UPDATE {OrderEvent._meta.db_table} SET snapshot = jsonb_set(snapshot, '{{cache}}', %s::jsonb)"
    if not connection.in_atomic_block:
        # On its own this UPDATE is its own transaction, and what it records is informative only: a database crash
        # that lost it would leave the event's "written after the transaction commits" note. So its commit does not
        # wait for the disk (synchronous_commit off, for this statement's transaction only); every commit that
        # carries pipeline state still does.
        update += " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS this_transaction_only"
    with connection.cursor() as cursor:
        cursor.execute(f"{update} WHERE id = %s", [json.dumps(state), event.pk])
