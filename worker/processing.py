"""What the worker does with one delivered message: decode it, then run the order's steps.

Each step is one transaction that locks the order row, checks the step it expects (a guarded update), does its
work and records an event. A redelivered message therefore resumes at the first unfinished step and never
repeats a finished one; the unique payment row makes a double charge impossible even if this logic were wrong.
Redis writes happen after each commit. The verdict (ack, retry later, dead-letter) goes back to the consumer,
which owns the AMQP channel and acts on it only after these commits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
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

from orders import sandbox
from orders.events import QueueSnapshot, record_event
from orders.models import EventKind, Notification, Order, OrderLine, OrderStatus, OrderStep, Payment, Product
from orders.services import MESSAGE_VERSION, Transition, attach_lines, cache_after_commit, transition_order
from worker.faults import Faults, TransientFailure
from worker.topology import Topology, topology

log = logging.getLogger(__name__)

RETRIES_HEADER = "x-orderpipe-retries"
REASON_HEADER = "x-orderpipe-reason"


class Action(Enum):
    ACK = "ack"  # done: completed, failed permanently, or a duplicate of finished work
    RETRY = "retry"  # republish to a delay queue, then ack
    DEAD_LETTER = "dead_letter"  # publish to the dead-letter exchange with the reason, then ack


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""
    retry_queue: str = ""
    retries: int = 0


ACK = Verdict(Action.ACK)


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

    @property
    def retries(self) -> int:
        return int(self.headers.get(RETRIES_HEADER) or 0)

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
        if self.retries:
            snap["retries"] = self.retries
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


class Interrupted(Exception):
    """The worker is stopping while this order waits (step mode, delay): leave the message unacked."""


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


def charge(order: Order, faults: Faults) -> str:
    """The simulated payment gateway: a gateway reference, or a decline / timeout when the sandbox says so."""
    faults.maybe_fail_transiently("charge payment")
    if faults.declined():
        raise PaymentDeclined("payment declined by the (simulated) card issuer")
    return f"sim_{uuid.uuid4().hex[:20]}"


def send_confirmation(order: Order) -> tuple[str, str]:
    subject = f"Your order {str(order.id)[:8]} is confirmed"
    lines = "\n".join(f"  {line.quantity} x {line.sku} at {line.unit_price}" for line in order.lines.all())
    body = f"Thank you for your order.\n\n{lines}\n\nTotal charged: {order.total}\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [order.customer_email])
    return subject, body


# ---------------------------------------------------------------- the processor


class Processor:
    """Runs the steps of one order per delivery. One instance per worker; safe to share between its threads."""

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        topo: Topology | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        gateway: Callable[[Order, Faults], str] = charge,
    ) -> None:
        self.faults = faults or Faults()
        self.topology = topo or topology()
        self.should_stop = should_stop
        self.gateway = gateway
        self.steps: list[tuple[str, Callable[[uuid.UUID, Delivery], Transition | None]]] = [
            ("reserve inventory", self.reserve_inventory),
            ("charge payment", self.charge_payment),
            ("notify customer", self.notify_customer),
            ("complete", self.complete),
        ]

    # ------------------------------------------------------------ one delivery

    def process(self, delivery: Delivery) -> Verdict:
        """Handle one delivery end to end. Database errors propagate (the caller keeps the message unacked);
        Interrupted means the worker is stopping and the message must stay unacked too."""
        _lines.entry = None
        try:
            order_id = decode(delivery.body)
            started = self.start(order_id, delivery)
        except PoisonMessage as exc:
            log.warning("poison message %s: %s", delivery.message_id or "?", exc)
            return Verdict(Action.DEAD_LETTER, reason=f"poison message: {exc}")
        if started is None:
            return ACK
        cache_after_commit([started])
        for name, step in self.steps:
            self.wait_before_step(order_id, name, delivery)
            try:
                transition = step(order_id, delivery)
            except PermanentFailure as exc:
                self._commit_and_cache(self.fail, order_id, str(exc), delivery)
                log.info("order %s failed: %s", order_id, exc)
                return ACK
            except TransientFailure as exc:
                return self.retry_or_give_up(order_id, name, exc, delivery)
            if transition:
                cache_after_commit([transition])
        return ACK

    def wait_before_step(self, order_id: uuid.UUID, step: str, delivery: Delivery) -> None:
        """Sandbox: the step delay, and in step-by-step mode, wait for 'Next step' on the journey page."""
        self.faults.delay(self.should_stop)
        if not self.faults.step_mode():
            return
        announced = False
        while self.faults.step_mode():
            if self.should_stop():
                raise Interrupted(f"stopping while order {order_id} waits before '{step}'")
            if sandbox.step_grant_take(order_id=order_id):
                return
            if not announced:
                self._commit_and_cache(self._announce_wait, order_id, step, delivery)
                announced = True
            time.sleep(0.2)

    def _announce_wait(self, order_id: uuid.UUID, step: str, delivery: Delivery) -> Transition | None:
        with transaction.atomic():
            order = _locked(order_id)
            event = record_event(
                order,
                EventKind.STEP_WAITING,
                f"Step-by-step mode: waiting for 'Next step' before '{step}'. The message is unacked meanwhile.",
                queue=delivery.snapshot(),
            )
        return Transition(order=order, event=event)

    def _commit_and_cache(self, fn: Callable[..., Transition | None], *args: Any) -> Transition | None:
        transition = fn(*args)
        if transition:
            cache_after_commit([transition])
        return transition

    # ------------------------------------------------------------ steps

    def start(self, order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
        """Take the order into `processing` and count the attempt. Raises PoisonMessage for an unknown order.
        Returns None when the order is already terminal (a duplicate delivery)."""
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
                return None
            if order.status == OrderStatus.RETRYING or delivery.retries:
                kind = EventKind.RECEIVED
                message = f"Retry {delivery.retries} received back from the delay queue; resuming."
            elif delivery.redelivered or order.status == OrderStatus.PROCESSING or order.step != OrderStep.NONE:
                # The broker handed this message out before without an ack (a worker died or lost its channel).
                kind = EventKind.REDELIVERED
                message = (
                    f"Redelivered (delivery #{delivery.delivery_count}); resuming after step "
                    f"'{order.get_step_display()}'."
                    if order.step != OrderStep.NONE
                    else f"Redelivered (delivery #{delivery.delivery_count}); no step had finished yet."
                )
            else:
                kind, message = EventKind.RECEIVED, f"Received by a worker from {delivery.queue}."
            return transition_order(
                order,
                to=OrderStatus.PROCESSING,
                kind=kind,
                message=message,
                queue=delivery.snapshot(),
                attempts=order.attempts + 1,
            )

    def _advance(self, order: Order, *, step: OrderStep, kind: EventKind, message: str, delivery: Delivery):
        return transition_order(
            order, to=OrderStatus.PROCESSING, kind=kind, message=message, queue=delivery.snapshot(), step=step
        )

    def reserve_inventory(self, order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
        """Decrement stock for every line, all or nothing. Out of stock is permanent."""
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING or order.step != OrderStep.NONE:
                return None
            self.faults.maybe_fail_transiently("reserve inventory")
            transition = self._advance(
                order,
                step=OrderStep.INVENTORY_RESERVED,
                kind=EventKind.INVENTORY_RESERVED,
                message="Reserved " + ", ".join(f"{line.quantity} × {line.sku}" for line in order.lines.all()) + ".",
                delivery=delivery,
            )
            # The stock decrements come last, just before the commit: every order for a product waits on its row
            # lock, so it is held for as short a time as possible. Out of stock rolls the step back with them. Lock
            # products in a fixed order so two orders for the same products cannot deadlock.
            for line in sorted(order.lines.all(), key=lambda item: item.product_id):
                taken = Product.objects.filter(pk=line.product_id, stock__gte=line.quantity).update(
                    stock=F("stock") - line.quantity
                )
                if not taken:
                    raise OutOfStock(f"out of stock: {line.sku} (wanted {line.quantity})")
            self.faults.maybe_crash("reserve inventory")
            return transition

    def charge_payment(self, order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING or order.step != OrderStep.INVENTORY_RESERVED:
                return None
            reference = self.gateway(order, self.faults)
            Payment.objects.create(order=order, amount=order.total, gateway_reference=reference)
            transition = self._advance(
                order,
                step=OrderStep.PAYMENT_CHARGED,
                kind=EventKind.PAYMENT_CHARGED,
                message=f"Charged {order.total} (gateway reference {reference}).",
                delivery=delivery,
            )
            # A crash here rolls the payment row back with the step: the redelivery charges exactly once.
            self.faults.maybe_crash("charge payment")
            return transition

    def notify_customer(self, order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING or order.step != OrderStep.PAYMENT_CHARGED:
                return None
            self.faults.maybe_fail_transiently("notify customer")
            # Sent inside the transaction: if the commit then fails, the retry sends it again (at least once),
            # which for a confirmation email is the right side to err on.
            subject, body = send_confirmation(order)
            Notification.objects.create(order=order, recipient=order.customer_email, subject=subject, body=body)
            transition = self._advance(
                order,
                step=OrderStep.CUSTOMER_NOTIFIED,
                kind=EventKind.CUSTOMER_NOTIFIED,
                message=f"Emailed {order.customer_email}: “{subject}”.",
                delivery=delivery,
            )
            self.faults.maybe_crash("notify customer")
            return transition

    def complete(self, order_id: uuid.UUID, delivery: Delivery) -> Transition | None:
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

    # ------------------------------------------------------------ failures

    def fail(self, order_id: uuid.UUID, reason: str, delivery: Delivery) -> Transition | None:
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

    def retry_or_give_up(self, order_id: uuid.UUID, step: str, exc: Exception, delivery: Delivery) -> Verdict:
        """A transient failure: schedule the next retry tier, or dead-letter the order after the last one.
        The order keeps its finished steps either way, so a retry or a replay resumes where it stopped."""
        tiers = self.topology.retry_tiers
        retries = delivery.retries
        if retries < len(tiers):
            tier = tiers[retries]
            message = (
                f"Transient failure in '{step}': {exc}. Retry {retries + 1} of {len(tiers)} "
                f"in {tier.delay_ms / 1000:g} s through {tier.queue}."
            )
            self._commit_and_cache(
                self._mark, order_id, OrderStatus.RETRYING, EventKind.RETRY_SCHEDULED, message, "", delivery
            )
            return Verdict(Action.RETRY, reason=str(exc), retry_queue=tier.queue, retries=retries + 1)
        reason = f"gave up after {len(tiers)} retries: {exc}"
        self._commit_and_cache(
            self._mark,
            order_id,
            OrderStatus.DEAD_LETTERED,
            EventKind.DEAD_LETTERED,
            f"Dead-lettered: {reason}. Replay it once the fault is fixed.",
            reason,
            delivery,
        )
        return Verdict(Action.DEAD_LETTER, reason=reason)

    def _mark(
        self,
        order_id: uuid.UUID,
        status: OrderStatus,
        kind: EventKind,
        message: str,
        reason: str,
        delivery: Delivery,
    ) -> Transition | None:
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING:
                return None
            changes = {"failure_reason": reason} if reason else {}
            return transition_order(order, to=status, kind=kind, message=message, queue=delivery.snapshot(), **changes)

    def record_dead_letter(self, delivery: Delivery, reason: str) -> Transition | None:
        """A message the broker dead-lettered by itself (the quorum queue's delivery limit: it crashed workers
        repeatedly). Mark its order `dead_lettered` so it shows up for replay."""
        order_id = peek_order_id(delivery.body)
        if order_id is None:
            return None
        with transaction.atomic():
            try:
                order = _locked(uuid.UUID(order_id))
            except Order.DoesNotExist:
                return None
            if order.status not in (OrderStatus.PROCESSING, OrderStatus.QUEUED, OrderStatus.PENDING):
                return None
            transition = transition_order(
                order,
                to=OrderStatus.DEAD_LETTERED,
                kind=EventKind.DEAD_LETTERED,
                message=f"Dead-lettered by RabbitMQ: {reason}. Replay it once the fault is fixed.",
                queue=delivery.snapshot(),
                failure_reason=reason,
            )
        cache_after_commit([transition])
        return transition


# The lines of the order this thread is working on. A delivery runs start to finish on one step thread, and an
# order's lines never change after it is accepted, so each delivery reads them once instead of once per step.
_lines = threading.local()


def _locked(order_id: uuid.UUID) -> Order:
    """The order, its row locked until the step's transaction ends, with its lines."""
    order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
    cached = getattr(_lines, "entry", None)
    if cached is None or cached[0] != order_id:
        cached = _lines.entry = (order_id, list(OrderLine.objects.filter(order_id=order_id).order_by("pk")))
    return attach_lines(order, cached[1])
