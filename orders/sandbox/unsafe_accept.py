"""The sandbox's unsafe publish modes, `dual_write` and `publish_first`: the designs the outbox replaces, on the real
code path, so a learner can watch them lose orders or send ghosts (docs/10-design-notes.md, "The unsafe publish
modes").
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from django.db import transaction

from orders import sandbox, services
from orders.events import record_event
from orders.models import EventKind, IdempotencyKey, Order, OrderStatus, Product, PublishMode
from orders.serializers import order_representation

log = logging.getLogger(__name__)

# (message body, message id) -> returns once the broker confirmed it; raises PublishError otherwise.
Publish = Callable[[dict[str, Any], str], None]

_publisher: Publish | None = None


class PublishError(Exception):
    """The broker did not take the message (unreachable, nacked, unroutable), or no publisher is registered."""


class AcceptFailed(Exception):
    """The sandbox's accept_failure_rate fault: the accept transaction failed just before its commit."""


def register_publisher(publish: Publish) -> None:
    """Called once per process by the worker app's ready(): the seam that keeps pika out of orders/."""
    global _publisher
    _publisher = publish


def publish_order(order: Order) -> str:
    """Publish the order's message from this process, confirmed. Returns the message id."""
    if _publisher is None:
        raise PublishError("no publisher registered (the worker app is not installed)")
    message_id = f"direct-{order.id}"
    _publisher(services.order_message(order), message_id)
    return message_id


def maybe_fail_accept(rate: float) -> None:
    if rate and random.random() < rate:
        raise AcceptFailed(
            "sandbox accept_failure_rate: the accept transaction failed before its commit and was rolled back; "
            "nothing was stored"
        )


def order_accept(
    *,
    current: sandbox.Modes,
    customer_email: str,
    items: list[dict[str, Any]],
    note: str = "",
    products: dict[str, Product] | None = None,
    key: str | None = None,
    fingerprint: str = "",
) -> tuple[dict[str, Any], int, bool]:
    """Accept an order under the sandbox's publish mode and accept fault. Returns (body, status, replayed).
    Raises AcceptFailed (nothing stored) or, in publish_first, PublishError (nothing stored either), and
    services.IdempotencyMismatch like the safe path."""
    mode = current.publish_mode
    outbox = mode == PublishMode.OUTBOX
    with transaction.atomic():
        if key is None:
            order = services.order_create(
                customer_email=customer_email, items=items, note=note, products=products, with_outbox=outbox
            )
            body, code, replayed = order_representation(order), 202, False
        else:
            record, replayed = services.order_create_idempotent(
                key=key,
                fingerprint=fingerprint,
                customer_email=customer_email,
                items=items,
                note=note,
                products=products,
                with_outbox=outbox,
            )
            if replayed:
                return record.response_body, record.response_status, True
            order, body, code = _order_of(record), record.response_body, record.response_status
        message_id = ""
        if mode == PublishMode.PUBLISH_FIRST:
            # The broker has the message from here on, whatever this transaction does next.
            message_id = publish_order(order)
        maybe_fail_accept(current.accept_failure_rate)
    if mode == PublishMode.PUBLISH_FIRST:
        _mark_published(order, message_id, "published by the request BEFORE its commit (publish_mode=publish_first)")
    elif mode == PublishMode.DUAL_WRITE:
        _dual_write_publish(order)
    return body, code, replayed


def _order_of(record: IdempotencyKey) -> Order:
    return Order.objects.prefetch_related("lines").get(pk=record.order_id)


def _dual_write_publish(order: Order) -> None:
    """The second write of a dual write, after the order's commit. A failure is logged and recorded on the order,
    and the request still answers 202: the order is committed, and with no outbox row nothing will publish it."""
    try:
        message_id = publish_order(order)
    except PublishError as exc:
        log.error(
            "dual_write: order %s committed but its publish failed (%s); it will never be processed", order.id, exc
        )
        with transaction.atomic():
            locked = Order.objects.select_for_update(of=("self",)).get(pk=order.pk)
            record_event(
                locked,
                EventKind.PUBLISH_FAILED,
                f"Publish failed after the commit ({exc}). publish_mode=dual_write: there is no outbox row, so "
                "nothing will publish it again. The order is accepted and lost.",
                queue={"note": "no message: the publish failed and nothing retries it"},
            )
        return
    _mark_published(order, message_id, "published by the request after its commit (publish_mode=dual_write)")


def _mark_published(order: Order, message_id: str, how: str) -> None:
    """pending -> queued, as the relay does after a confirm; skipped if a worker already took the order."""
    with transaction.atomic():
        locked = Order.objects.select_for_update(of=("self",)).prefetch_related("lines").filter(pk=order.pk).first()
        if locked is None or locked.status != OrderStatus.PENDING:
            return
        transition = services.transition_order(
            locked,
            to=OrderStatus.QUEUED,
            kind=EventKind.PUBLISHED,
            message=f"Message {message_id} {how}; the broker confirmed it.",
            queue={"message_id": message_id, "note": how},
        )
    services.cache_after_commit([transition])
