"""Writes to the order pipeline's state. Each service owns its transaction; none talks to RabbitMQ or Redis inside
it (the outbox carries the message, and cache writes happen after commit)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from orders import cache, journal
from orders.events import (
    QueueSnapshot,
    RowSnapshot,
    attach_cache_state,
    count_on_commit,
    make_snapshot,
    outbox_row,
    record_event_reference,
    stored_event,
)
from orders.models import (
    EventKind,
    IdempotencyKey,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    OutboxMessage,
    Product,
    allowed_sources,
)
from orders.prefetch import attach_prefetched
from orders.sandbox import policies
from orders.serializers import order_representation

MESSAGE_VERSION = 1


def outbox_channel() -> str:
    """The PostgreSQL NOTIFY channel that wakes the relay (prefixed, like every shared name)."""
    return f"{settings.ORDERPIPE_PREFIX}_outbox".replace(".", "_").replace("-", "_")


def order_message(order: Order) -> dict[str, Any]:
    """The body of an `order.placed` message. The worker treats PostgreSQL as the source of truth; the body only
    names the order and carries what a reader of the queue wants to see."""
    return {
        "order_id": str(order.id),
        "version": MESSAGE_VERSION,
        "placed_at": order.created_at.isoformat(),
        "customer_email": order.customer_email,
        "total": str(order.total),
    }


def insert_order_and_lines(
    *, customer_email: str, items: list[dict[str, Any]], note: str
) -> tuple[Order, list[OrderLine]]:
    """Price the lines from the catalog and insert the order and its lines, one ORM query per row. Call inside the
    transaction that also records the order's first event."""
    products = {p.sku: p for p in Product.objects.filter(sku__in=[item["sku"] for item in items])}
    total = sum((products[i["sku"]].price * i["quantity"] for i in items), Decimal("0.00"))
    order = Order.objects.create(customer_email=customer_email, note=note, total=total)
    lines = OrderLine.objects.bulk_create(
        OrderLine(
            order=order,
            product=products[item["sku"]],
            sku=item["sku"],
            quantity=item["quantity"],
            unit_price=products[item["sku"]].price,
        )
        for item in items
    )
    return order, lines


def _order_create_without_outbox(*, customer_email: str, items: list[dict[str, Any]], note: str) -> Order:
    """`order_create` for the sandbox's unsafe publish modes (orders/sandbox/unsafe_accept.py): no outbox row, so
    nothing but the request itself will ever publish the order."""
    with transaction.atomic():
        order, lines = insert_order_and_lines(customer_email=customer_email, items=items, note=note)
        record_event_reference(
            order,
            EventKind.ACCEPTED,
            f"Accepted by the API: {len(items)} line(s), total {order.total}. NO outbox message (unsafe publish "
            "mode): the request publishes it to RabbitMQ itself, and nothing retries that publish.",
            queue={"note": "no outbox row: the request publishes the message itself"},
            cache={"key": cache.order_key(order.id), "present": False, "note": "not cached yet"},
        )
    return attach_lines(order, lines)


def order_create(
    *,
    customer_email: str,
    items: list[dict[str, Any]],
    note: str = "",
    products: dict[str, Product] | None = None,
    with_outbox: bool = True,
) -> Order:
    """Accept an order: price its lines from the catalog and store the order, its lines, an outbox message and
    the first journey event in one transaction (one statement, `journal.accept`). The commit's NOTIFY wakes the
    relay. `reference.order_create_reference` is the same, written the readable way.

    `products` (sku -> Product) are the catalog rows the caller already read while validating, if it did; the
    returned order carries its lines, so it can be represented without reading it back. `with_outbox=False`: see
    `_order_create_without_outbox` (sandbox only)."""
    if not with_outbox:
        return _order_create_without_outbox(customer_email=customer_email, items=items, note=note)
    if products is None:
        products = {p.sku: p for p in Product.objects.filter(sku__in=[item["sku"] for item in items])}
    total = sum((products[i["sku"]].price * i["quantity"] for i in items), Decimal("0.00"))
    now = timezone.now()
    order = Order(customer_email=customer_email, note=note, total=total, created_at=now, updated_at=now)
    lines = [
        OrderLine(
            order=order,
            product_id=products[item["sku"]].pk,
            sku=item["sku"],
            quantity=item["quantity"],
            unit_price=products[item["sku"]].price,
        )
        for item in items
    ]
    outbox = OutboxMessage(order=order, payload=order_message(order), created_at=now)
    queue: QueueSnapshot = {
        "note": "not published yet: waiting in the outbox table"
    }  # + outbox_id, filled in by the statement
    # The outbox row's id is drawn by the statement, which fills it in here and in queue.outbox_id.
    outbox_snapshot = outbox_row(outbox)
    snapshot = make_snapshot(
        order,
        queue=queue,
        cache={"key": cache.order_key(order.id), "present": False, "note": "not cached yet"},
        rows=[outbox_snapshot],
    )
    message = f"Accepted by the API: {len(items)} line(s), total {total}. Stored with outbox message #"
    accepted = journal.accept(
        order=order, lines=lines, outbox=outbox, message=message, snapshot=snapshot, channel=outbox_channel()
    )
    for n, line in enumerate(lines):
        line.id = accepted.line_ids[n]
    # As if read back: saving them again would update, not insert.
    order = attach_lines(journal.loaded(order), [journal.loaded(line) for line in lines])
    queue["outbox_id"] = accepted.outbox_id
    outbox_snapshot["id"] = str(accepted.outbox_id)
    event = stored_event(
        order,
        pk=accepted.event_id,
        seq=1,
        kind=EventKind.ACCEPTED,
        at=now,
        message=f"{message}{accepted.outbox_id}.",
        snapshot=snapshot,
    )
    count_on_commit(order, event)
    return order


def attach_lines(order: Order, lines: list[OrderLine]) -> Order:
    """Make `order.lines.all()` return `lines` without a query, exactly as prefetch_related("lines") would have.
    An order's lines never change after it is created, so lines read once serve every later step."""
    attach_prefetched(order, "lines", lines)
    return order


@dataclass
class Transition:
    """A committed status change and the event that recorded it."""

    order: Order
    event: OrderEvent


def transition_order(
    order: Order,
    *,
    to: OrderStatus,
    kind: EventKind,
    message: str,
    queue: QueueSnapshot | dict[str, Any] | None = None,
    rows: list[RowSnapshot] | None = None,
    log_level: int = logging.INFO,
    **changes: Any,
) -> Transition:
    """Move a locked order to `to` with a guarded UPDATE and record the event (one statement, `journal.transition`).
    Call inside a transaction with the row locked; `changes` are plain values (the lock makes read-modify-write
    safe); `rows` are the other rows the step wrote, for the event's snapshot. Raises InvalidTransition when the
    table of allowed transitions forbids it or the row changed under us. `reference.transition_reference` is the
    same, written the readable way."""
    if order.status not in allowed_sources(to):
        raise InvalidTransition(f"{order.status} -> {to} is not an allowed transition")
    now = timezone.now()
    before = {name: getattr(order, name) for name in ("status", "version", "updated_at", *changes)}
    # The snapshot shows the row as this statement leaves it.
    order.status, order.version, order.updated_at = to, order.version + 1, now
    for name, value in changes.items():
        setattr(order, name, value)
    snapshot = make_snapshot(order, queue=queue, rows=rows)
    row = journal.transition(
        order.pk,
        from_status=str(before["status"]),
        from_version=before["version"],
        to=str(to),
        at=now,
        changes=changes,
        kind=kind,
        message=message,
        snapshot=snapshot,
    )
    if row is None:
        for name, value in before.items():
            setattr(order, name, value)
        raise InvalidTransition(f"order {order.pk} changed under us")
    event = stored_event(order, pk=row.pk, seq=row.seq, kind=kind, at=now, message=message, snapshot=snapshot)
    count_on_commit(order, event, previous_at=row.previous_at, log_level=log_level)
    return Transition(order=order, event=event)


@dataclass(frozen=True)
class Change:
    """One order's part of `transition_many`: the locked order, its event's message and queue snapshot, the other
    rows its step wrote, and the further fields it sets."""

    order: Order
    message: str
    queue: QueueSnapshot | dict[str, Any]
    rows: list[RowSnapshot] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)


def transition_many(
    items: list[Change], *, to: OrderStatus, kind: EventKind, log_level: int = logging.INFO
) -> list[Transition]:
    """`transition_order` for a batch: move every locked order to `to` and record one event each, with its own
    snapshot, in one guarded statement (`journal.transition_many`). Call inside a transaction with the rows locked;
    every item sets the same fields. Raises InvalidTransition, like `transition_order`, if any order is not allowed
    to move or changed under us (the caller's transaction then rolls them all back). Each event's log line is at
    `log_level` (see `metrics.event_committed`)."""
    now = timezone.now()
    moves, befores = [], []
    for item in items:
        order = item.order
        if order.status not in allowed_sources(to):
            raise InvalidTransition(f"{order.status} -> {to} is not an allowed transition")
        befores.append((order.status, order.version))
        # The snapshot shows the row as the statement leaves it.
        order.status, order.version, order.updated_at = to, order.version + 1, now
        for name, value in item.changes.items():
            setattr(order, name, value)
        moves.append(
            journal.Move(
                order_id=order.pk,
                from_status=str(befores[-1][0]),
                from_version=befores[-1][1],
                to=str(to),
                changes=item.changes,
                kind=kind,
                message=item.message,
                snapshot=make_snapshot(order, queue=item.queue, rows=item.rows),
            )
        )
    appended = journal.transition_many(moves, at=now)
    if len(appended) != len(items):
        missing = [str(item.order.pk) for item in items if str(item.order.pk) not in appended]
        raise InvalidTransition(f"orders {', '.join(missing)} changed under us")
    transitions = []
    for item, move in zip(items, moves, strict=True):
        row = appended[str(item.order.pk)]
        event = stored_event(
            item.order, pk=row.pk, seq=row.seq, kind=kind, at=now, message=item.message, snapshot=move.snapshot
        )
        count_on_commit(item.order, event, previous_at=row.previous_at, log_level=log_level)
        transitions.append(Transition(order=item.order, event=event))
    return transitions


class InvalidTransition(Exception):
    pass


def cache_after_commit(transitions: list[Transition]) -> None:
    """Write-through: after the commit, store each order's new representation in Redis and note in its event
    what the cache then held. Runs outside any transaction; the orders must have their lines prefetched.

    The cache policy writes (orders/sandbox/policies.py: write-through, but in the sandbox's cache_aside and off
    modes nothing is written and the event notes what the cache holds instead, which may be an older status)."""
    policy = policies.cache_policy()
    for item in transitions:
        attach_cache_state(item.event, policy.after_commit(item.order))


def cache_after_batch_commit(transitions: list[Transition]) -> None:
    """`cache_after_commit` for a batch's transitions: the Redis writes in one pipelined round trip, and what they
    left recorded in the events with one statement."""
    if not transitions:
        return
    states = policies.cache_policy().after_batch_commit([item.order for item in transitions])
    for item, state in zip(transitions, states, strict=True):
        item.event.snapshot["cache"] = state
    journal.set_cache_states([(item.event.pk, dict(state)) for item, state in zip(transitions, states, strict=True)])


@transaction.atomic
def order_replay(*, order_id: uuid.UUID | str, replayed_by: str = "", via: str) -> Transition | None:
    """Send a dead-lettered order through the pipeline again: a new outbox message in the same transaction as
    the move to `queued`. The order keeps its finished steps, so it resumes where it stopped (no double charge).
    Returns None if the order is not dead-lettered (anymore)."""
    order = Order.objects.select_for_update(of=("self",)).prefetch_related("lines").get(pk=order_id)
    if order.status != OrderStatus.DEAD_LETTERED:
        return None
    outbox = OutboxMessage.objects.create(order=order, payload=order_message(order))
    who = f" by {replayed_by}" if replayed_by else ""
    transition = transition_order(
        order,
        to=OrderStatus.QUEUED,
        kind=EventKind.REPLAYED,
        message=f"Replayed from the dead letters{who} (via {via}); outbox message #{outbox.id} will carry it.",
        queue={"outbox_id": outbox.id, "note": "back in the outbox; the relay publishes it"},
        failure_reason="",
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [outbox_channel(), str(outbox.id)])
    return transition


# ---------------------------------------------------------------- idempotency

IDEMPOTENCY_TTL = timedelta(hours=24)


class IdempotencyMismatch(Exception):
    """The key was used before with a different request body."""


def request_fingerprint(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _live_key(key: str) -> IdempotencyKey | None:
    return IdempotencyKey.objects.filter(key=key, expires_at__gt=timezone.now()).first()


def _replay(record: IdempotencyKey, fingerprint: str) -> IdempotencyKey:
    if record.request_hash != fingerprint:
        raise IdempotencyMismatch("This Idempotency-Key was already used with a different request body.")
    return record


def order_create_idempotent(
    *,
    key: str,
    fingerprint: str,
    customer_email: str,
    items: list[dict[str, Any]],
    note: str = "",
    products: dict[str, Product] | None = None,
    with_outbox: bool = True,
) -> tuple[IdempotencyKey, bool]:
    """Create the order once per key: returns (the stored first response, whether this call is a replay).

    The key row is inserted in the order's own transaction. A concurrent request with the same key blocks on the
    key's primary-key index until the first commits, then fails with IntegrityError and rolls back its own order:
    two requests can never both create an order. Keys live 24 hours."""
    existing = _live_key(key)
    if existing is not None:
        return _replay(existing, fingerprint), True
    try:
        with transaction.atomic():
            IdempotencyKey.objects.filter(key=key, expires_at__lte=timezone.now()).delete()
            order = order_create(
                customer_email=customer_email, items=items, note=note, products=products, with_outbox=with_outbox
            )
            record = IdempotencyKey.objects.create(
                key=key,
                request_hash=fingerprint,
                order=order,
                response_status=202,
                response_body=order_representation(order),
                expires_at=timezone.now() + IDEMPOTENCY_TTL,
            )
        return record, False
    except IntegrityError:
        existing = _live_key(key)
        if existing is None:
            raise
        return _replay(existing, fingerprint), True


def order_accept(
    *,
    customer_email: str,
    items: list[dict[str, Any]],
    note: str = "",
    products: dict[str, Product] | None = None,
    key: str | None = None,
    fingerprint: str = "",
) -> tuple[dict[str, Any], int, bool]:
    """What POST /api/orders/ does: `order_create`, or with an Idempotency-Key `order_create_idempotent`. Returns
    (body, status, replayed); raises IdempotencyMismatch when the key was used for another request."""
    if key is None:
        order = order_create(customer_email=customer_email, items=items, note=note, products=products)
        return order_representation(order), 202, False
    record, replayed = order_create_idempotent(
        key=key, fingerprint=fingerprint, customer_email=customer_email, items=items, note=note, products=products
    )
    return record.response_body, record.response_status, replayed


def idempotency_keys_purge() -> int:
    """Delete expired keys (the relay calls this now and then)."""
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
