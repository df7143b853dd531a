"""What the worker does with one delivered message: decode it, then run the order's steps.

Each step is one transaction that locks the order row, checks the step it expects (a guarded update), does its
work and records an event. A redelivered message therefore resumes at the first unfinished step and never
repeats a finished one; the unique payment row makes a double charge impossible even if this logic were wrong.
Redis writes happen after each commit.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from orders.events import QueueSnapshot, record_event
from orders.models import (
    EventKind,
    Notification,
    Order,
    OrderStatus,
    OrderStep,
    Payment,
    Product,
)
from orders.services import MESSAGE_VERSION, Transition, cache_after_commit, transition_order

log = logging.getLogger(__name__)


class Outcome(Enum):
    ACK = "ack"  # done (completed, failed permanently, or a duplicate of finished work)
    REJECT = "reject"  # poison: dead-letter it


@dataclass
class Delivery:
    """One message as the broker handed it over, decoupled from pika so processing is testable without it."""

    body: bytes
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    queue: str = ""
    message_id: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    queue_ready: int | None = None

    @property
    def delivery_count(self) -> int:
        # Quorum queues count earlier returns of this message in x-delivery-count (absent on the first delivery).
        return int(self.headers.get("x-delivery-count") or 0) + 1

    def snapshot(self, note: str = "") -> QueueSnapshot:
        snap: QueueSnapshot = {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "queue": self.queue,
            "message_id": self.message_id,
            "delivery_tag": self.delivery_tag,
            "redelivered": self.redelivered,
            "delivery_count": self.delivery_count,
            "queue_ready": self.queue_ready,
        }
        if note:
            snap["note"] = note
        return snap


class PoisonMessage(Exception):
    """A message no retry can fix: undecodable, unknown order, unsupported version."""


class PermanentFailure(Exception):
    """The order cannot succeed (out of stock, payment declined): it fails without retry."""


class PaymentDeclined(PermanentFailure):
    pass


class OutOfStock(PermanentFailure):
    pass


def decode(body: bytes) -> uuid.UUID:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PoisonMessage(f"undecodable body: {exc}") from None
    if not isinstance(message, dict):
        raise PoisonMessage("body is not a JSON object")
    if message.get("version") != MESSAGE_VERSION:
        raise PoisonMessage(f"unsupported message version {message.get('version')!r}")
    try:
        return uuid.UUID(str(message.get("order_id")))
    except ValueError:
        raise PoisonMessage(f"order_id is not a UUID: {message.get('order_id')!r}") from None


def peek_order_id(body: bytes) -> str | None:
    try:
        return str(decode(body))
    except PoisonMessage:
        return None


# ---------------------------------------------------------------- the simulated outside world


def charge(order: Order) -> str:
    """The simulated payment gateway: returns a gateway reference."""
    return f"sim_{uuid.uuid4().hex[:20]}"


def send_confirmation(order: Order) -> tuple[str, str]:
    subject = f"Your order {str(order.id)[:8]} is confirmed"
    lines = "\n".join(f"  {line.quantity} x {line.sku} at {line.unit_price}" for line in order.lines.all())
    body = f"Thank you for your order.\n\n{lines}\n\nTotal charged: {order.total}\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [order.customer_email])
    return subject, body


# ---------------------------------------------------------------- steps


def _locked(order_id: uuid.UUID) -> Order:
    return Order.objects.select_for_update(of=("self",)).prefetch_related("lines").get(pk=order_id)


def start(order_id: uuid.UUID, delivery: Delivery) -> tuple[Order, Transition | None]:
    """Take the order into `processing` and count the attempt. Raises PoisonMessage for an unknown order.
    Returns the transition, or None when the order is already terminal (a duplicate delivery)."""
    with transaction.atomic():
        try:
            order = _locked(order_id)
        except Order.DoesNotExist:
            raise PoisonMessage(f"unknown order {order_id}") from None
        if order.is_terminal:
            record_event(
                order,
                EventKind.DUPLICATE_IGNORED,
                f"Delivery #{delivery.delivery_count} ignored: the order is already {order.status}.",
                queue=delivery.snapshot(),
            )
            return order, None
        resuming = order.status == OrderStatus.PROCESSING or order.step != OrderStep.NONE
        if resuming:
            kind, message = (
                EventKind.REDELIVERED,
                f"Redelivered (delivery #{delivery.delivery_count}); resuming after step '{order.get_step_display()}'.",
            )
        else:
            kind, message = EventKind.RECEIVED, f"Received by a worker from {delivery.queue}."
        transition = transition_order(
            order,
            to=OrderStatus.PROCESSING,
            kind=kind,
            message=message,
            queue=delivery.snapshot(),
            attempts=order.attempts + 1,
        )
    return transition.order, transition


def _advance(order: Order, *, to_step: OrderStep, kind: EventKind, message: str, delivery: Delivery) -> Transition:
    return transition_order(
        order, to=OrderStatus.PROCESSING, kind=kind, message=message, queue=delivery.snapshot(), step=to_step
    )


def reserve_inventory(order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
    """Decrement stock for every line, all or nothing. Out of stock is permanent."""
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.PROCESSING or order.step != OrderStep.NONE:
            return None
        # Lock products in a fixed order so two orders for the same products cannot deadlock.
        for line in sorted(order.lines.all(), key=lambda item: item.product_id):
            taken = Product.objects.filter(pk=line.product_id, stock__gte=line.quantity).update(
                stock=F("stock") - line.quantity
            )
            if not taken:
                raise OutOfStock(f"out of stock: {line.sku} (wanted {line.quantity})")
        return _advance(
            order,
            to_step=OrderStep.INVENTORY_RESERVED,
            kind=EventKind.INVENTORY_RESERVED,
            message="Reserved " + ", ".join(f"{line.quantity} × {line.sku}" for line in order.lines.all()) + ".",
            delivery=delivery,
        )


def charge_payment(
    order_id: uuid.UUID, delivery: Delivery, gateway: Callable[[Order], str] = charge
) -> Transition | None:
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.PROCESSING or order.step != OrderStep.INVENTORY_RESERVED:
            return None
        reference = gateway(order)
        Payment.objects.create(order=order, amount=order.total, gateway_reference=reference)
        return _advance(
            order,
            to_step=OrderStep.PAYMENT_CHARGED,
            kind=EventKind.PAYMENT_CHARGED,
            message=f"Charged {order.total} (gateway reference {reference}).",
            delivery=delivery,
        )


def notify_customer(order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.PROCESSING or order.step != OrderStep.PAYMENT_CHARGED:
            return None
        # Sent inside the transaction: if the commit then fails the retry sends it again (at least once), which
        # for a confirmation email is the right side to err on.
        subject, body = send_confirmation(order)
        Notification.objects.create(order=order, recipient=order.customer_email, subject=subject, body=body)
        return _advance(
            order,
            to_step=OrderStep.CUSTOMER_NOTIFIED,
            kind=EventKind.CUSTOMER_NOTIFIED,
            message=f"Emailed {order.customer_email}: “{subject}”.",
            delivery=delivery,
        )


def complete(order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.PROCESSING or order.step != OrderStep.CUSTOMER_NOTIFIED:
            return None
        payment = Payment.objects.get(order=order)
        result = {
            "payment_reference": payment.gateway_reference,
            "charged": str(payment.amount),
            "notified": order.customer_email,
        }
        return transition_order(
            order,
            to=OrderStatus.COMPLETED,
            kind=EventKind.COMPLETED,
            message="Completed. The message is acknowledged after this commit.",
            queue=delivery.snapshot(),
            result=result,
            completed_at=timezone.now(),
        )


def fail(order_id: uuid.UUID, reason: str, delivery: Delivery) -> Transition | None:
    """Permanent failure: status `failed` with the reason; stock reserved by this order is released."""
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.PROCESSING:
            return None
        released = ""
        if order.step != OrderStep.NONE:
            for line in sorted(order.lines.all(), key=lambda item: item.product_id):
                Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
            released = " Reserved stock released."
        return transition_order(
            order,
            to=OrderStatus.FAILED,
            kind=EventKind.FAILED,
            message=f"Failed: {reason}.{released}",
            queue=delivery.snapshot(),
            failure_reason=reason,
        )


STEPS = (reserve_inventory, charge_payment, notify_customer, complete)


def process(delivery: Delivery, *, gateway: Callable[[Order], str] = charge) -> Outcome:
    """Handle one delivery end to end. Database errors propagate (the caller keeps the message unacked)."""
    try:
        order_id = decode(delivery.body)
        _order, started = start(order_id, delivery)
    except PoisonMessage as exc:
        log.warning("poison message %s: %s", delivery.message_id, exc)
        return Outcome.REJECT
    if started is None:
        return Outcome.ACK
    cache_after_commit([started])
    for step in STEPS:
        try:
            transition = (
                charge_payment(order_id, delivery, gateway) if step is charge_payment else step(order_id, delivery)
            )
        except PermanentFailure as exc:
            transition = fail(order_id, str(exc), delivery)
            if transition:
                cache_after_commit([transition])
            log.info("order %s failed: %s", order_id, exc)
            return Outcome.ACK
        if transition:
            cache_after_commit([transition])
    log.info("order %s completed", order_id)
    return Outcome.ACK
