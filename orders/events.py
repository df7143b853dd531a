"""An order's journey: every transition appends an OrderEvent with a snapshot of the database row, the message
and queue state, and the Redis entry at that moment. This module builds the snapshots and counts committed events;
the rows themselves are written by `orders.journal`."""

from __future__ import annotations

from functools import partial
from typing import Any, TypedDict

from django.db import transaction
from django.utils import timezone

from orders import journal, metrics
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
    retries: int
    note: str
    # Where the message is handed on to, at a retry or a dead letter (worker/processing.py builds these).
    from_queue: str
    ttl_ms: int
    back_at: str
    headers: dict[str, str]
    watched_via: str
    delivery_limit: int


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


def record_event(
    order: Order,
    kind: EventKind,
    message: str,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
) -> OrderEvent:
    """Append an event to the order's journey (one statement, `journal.append`).

    Call inside the transaction that made the change, with the order row locked (select_for_update or a guarded
    UPDATE): the lock is what keeps `seq` gap-free and unique when a relay and a worker touch the same order.
    """
    snapshot = make_snapshot(order, queue=queue, cache=cache)
    at = timezone.now()
    row = journal.append(order, kind, message, dict(snapshot), at=at)
    event = stored_event(order, pk=row.pk, seq=row.seq, kind=kind, at=at, message=message, snapshot=snapshot)
    count_on_commit(order, event, previous_at=row.previous_at)
    return event


def record_event_reference(
    order: Order,
    kind: EventKind,
    message: str,
    *,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    cache: CacheState | dict[str, Any] | None = None,
) -> OrderEvent:
    """`record_event`, the readable way (`journal.append_reference`): the same row, written with the ORM."""
    snapshot = make_snapshot(order, queue=queue, cache=cache)
    event, previous_at = journal.append_reference(order, kind, message, dict(snapshot))
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
    """The OrderEvent instance for a row just inserted with SQL (as if read back, without reading it)."""
    event = journal.loaded(
        OrderEvent(id=pk, order=order, seq=seq, kind=kind, at=at, message=message, snapshot=snapshot)
    )
    event.order = order  # the instance the caller holds, so event.order needs no query
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
    journal.set_cache_state(event.pk, dict(state))
