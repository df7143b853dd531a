"""An order's processing steps as one table (`STEPS`): what each step requires, does and records, in the readable
per-order form and the batched form. Each step is one transaction that locks the order, checks that it is at the step
the table requires (the guard), does its effect and records an event. orders/runner.py runs the table; why a
redelivery can never repeat a step or charge twice: docs/10-design-notes.md ("The steps").
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from psycopg import sql

from orders import gateway, notifications
from orders.events import RowSnapshot, notification_row, payment_row, product_row
from orders.failures import (
    BrokenInvariant,
    FaultInjector,
    OutOfStock,
)
from orders.gateway import Gateway
from orders.models import (
    EventKind,
    Notification,
    Order,
    OrderLine,
    OrderStatus,
    OrderStep,
    Payment,
    Product,
)
from orders.notifications import Notifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seams:
    """The outside world a step talks to: the sandbox's faults, the payment gateway, the email sender, and how the
    steps guard, take stock, charge and record (`policy`: the production way unless a sandbox mode swaps a part)."""

    faults: FaultInjector
    charge: Gateway = gateway.charge
    notify: Notifier = notifications.send_confirmation
    policy: StepPolicy = field(default_factory=lambda: SAFE_STEPS)


@dataclass(frozen=True)
class StepPolicy:
    """How the steps guard, take stock, charge and record what they did. `SAFE_STEPS` (below) is the production
    way; each of the sandbox's unsafe modes swaps one part (orders/sandbox/policies.py chooses, from the settings)."""

    # Whether the order is where the step may run: the guard a redelivery meets.
    at: Callable[[Order, Step], bool]
    # Adds `change` (negative: takes) to a product's stock; returns the stock it left, None when there was not enough.
    take_stock: Callable[[int, int], int | None]
    # Asks the gateway for the order's charge; returns its reference.
    charge: Callable[[Order, Seams], str]
    # Records the charge (the gateway's reference) and the email sent (subject, body) in the step's transaction.
    record_payment: Callable[[Order, str], Done]
    record_notification: Callable[[Order, str, str], Done]


@dataclass(frozen=True)
class Done:
    """What a step's effect did: the event's message, the order's new status and fields, and the other rows it
    wrote as it left them."""

    message: str
    to: OrderStatus = OrderStatus.PROCESSING
    changes: dict[str, Any] = field(default_factory=dict)
    rows: list[RowSnapshot] = field(default_factory=list)  # the other rows it wrote, for the event's snapshot


# An outage, not a failure of one order: it propagates, and the caller keeps the messages until the database answers.
OUTAGE = (OperationalError, InterfaceError)

# The batched form of an effect (orders/batch.py): for the batch's orders, locked and at the step, with what the
# outside call answered for each (by order id), what each did or the exception that takes it out of the batch.
BatchEffect = Callable[[list[Order], Seams, dict[uuid.UUID, Any]], list[Done | Exception]]
# The batched form of an outside call: each order's answer, or the exception that is its answer.
BatchOutside = Callable[[list[Order], Seams], list[Any]]


@dataclass(frozen=True)
class Step:
    name: str
    requires: OrderStep  # the step the order must be at: the guard
    then: OrderStep | None  # the step it is at after this one commits (None: the step stays, the status moves)
    kind: EventKind
    # Runs inside the step's transaction, the order row locked, after the guard passed.
    effect: Callable[[Order, Seams, Any], Done]
    # The same effect for a batch of orders in one transaction: the same events, the statements shared.
    effect_many: BatchEffect
    # Runs before the step's transaction, in its own: a call to another system, whose result `effect` receives.
    outside: Callable[[Order, Seams], Any] | None = None
    # The same call for a batch (None: `outside` once per order).
    outside_many: BatchOutside | None = None
    transient_faults: bool = True  # the sandbox's simulated timeouts may hit this step
    crash_point: bool = True  # the sandbox's crash may kill the worker inside this step's transaction

    @property
    def target(self) -> OrderStatus:
        """The status every order has once this step commits."""
        return OrderStatus.COMPLETED if self.then is None else OrderStatus.PROCESSING

    def fields(self, done: Done) -> dict[str, Any]:
        """The order's fields once this step commits: the effect's changes and the next step."""
        return done.changes if self.then is None else {"step": self.then, **done.changes}

    def ask_outside_many(self, orders: list[Order], seams: Seams) -> list[Any]:
        """Each order's answer from the step's other system, or the exception that is its answer."""
        if self.outside_many is not None:
            return self.outside_many(orders, seams)
        if self.outside is None:
            raise BrokenInvariant(f"step '{self.name}' calls no other system")
        return each(self.outside, orders, seams)


def each(call: Callable[[Order, Seams], Any], orders: list[Order], seams: Seams) -> list[Any]:
    """`call` for each order in turn: its answer, or the exception it raised. An outage propagates."""
    answers: list[Any] = []
    for order in orders:
        try:
            answers.append(call(order, seams))
        except OUTAGE:
            raise
        except Exception as exc:
            answers.append(exc)
    return answers


# ---------------------------------------------------------------- the effects


def reserve_inventory(order: Order, seams: Seams, _: Any) -> Done:
    """Decrement stock for every line, all or nothing. Out of stock is permanent."""
    # Lock products in a fixed order so two orders for the same products cannot deadlock. Out of stock rolls the
    # whole step back with the decrements before it. Each decrement returns the stock it left, for the snapshot;
    # the row locks are then held until the commit, one statement (the order's transition) longer than if the
    # decrements came last: the price of showing the stock as this step left it without a query more.
    rows = []
    for line in sorted(order.lines.all(), key=lambda item: item.product_id):
        stock = seams.policy.take_stock(line.product_id, -line.quantity)
        if stock is None:
            raise out_of_stock(line)
        rows.append(product_row(line.product_id, line.sku, stock, -line.quantity))
    return reserved(order, rows)


# What a step's effect says it did, shared with the batched steps (orders/batch.py) so both write the same events.


def out_of_stock(line: OrderLine) -> OutOfStock:
    return OutOfStock(f"out of stock: {line.sku} (wanted {line.quantity})")


def reserved(order: Order, rows: list[RowSnapshot]) -> Done:
    taken = ", ".join(f"{line.quantity} × {line.sku}" for line in order.lines.all())
    return Done(message=f"Reserved {taken}.", rows=rows)


def charged(order: Order, payment: Payment) -> Done:
    return Done(
        message=f"Charged {order.total} (gateway reference {payment.gateway_reference}).", rows=[payment_row(payment)]
    )


def notified(order: Order, notification: Notification) -> Done:
    return Done(
        message=f"Emailed {order.customer_email}: “{notification.subject}”.", rows=[notification_row(notification)]
    )


def completed(payment: Payment, order: Order) -> Done:
    result = {
        "payment_reference": payment.gateway_reference,
        "charged": str(payment.amount),
        "notified": order.customer_email,
    }
    return Done(
        message="Completed. The message is acknowledged after this commit.",
        to=OrderStatus.COMPLETED,
        changes={"result": result, "completed_at": timezone.now()},
    )


_CHANGE_STOCK = (
    sql.SQL("UPDATE {} SET stock = stock + %(change)s WHERE id = %(id)s AND stock + %(change)s >= 0 RETURNING stock")
    .format(sql.Identifier(Product._meta.db_table))
    .as_string()
)


def change_stock(product_id: int, change: int) -> int | None:
    """Add `change` (negative: take) to a product's stock unless that would make it negative; returns the stock it
    left, or None when there was not enough. One statement: the ORM's update() cannot return the new value."""
    with connection.cursor() as cursor:
        cursor.execute(_CHANGE_STOCK, {"change": change, "id": product_id})
        row = cursor.fetchone()
    return None if row is None else row[0]


def call_gateway(order: Order, seams: Seams) -> str:
    # Before our transaction and outside it: the gateway is another system. A crash between this call and our
    # commit leaves the provider's charge and no Payment; the redelivery calls again with the same key and gets
    # the same charge back.
    return seams.policy.charge(order, seams)


def charge_with_its_key(order: Order, seams: Seams) -> str:
    """The production charge: the gateway the seams name, keyed by the order id (`gateway.charge`)."""
    return seams.charge(order, seams.faults)


def record_payment(order: Order, seams: Seams, reference: str) -> Done:
    return seams.policy.record_payment(order, reference)


def create_payment(order: Order, reference: str) -> Done:
    """The order's one payment (a second would break its unique key: the guard keeps a finished step from rerunning)."""
    payment = Payment.objects.create(order=order, amount=order.total, gateway_reference=reference)
    return charged(order, payment)


def notify_customer(order: Order, seams: Seams, _: Any) -> Done:
    # Sent inside the transaction: if the commit then fails, the retry sends it again (at least once), which for a
    # confirmation email is the right side to err on.
    subject, body = seams.notify(order)
    return seams.policy.record_notification(order, subject, body)


def create_notification(order: Order, subject: str, body: str) -> Done:
    """The order's one notification row, for the email just sent."""
    notification = Notification.objects.create(order=order, recipient=order.customer_email, subject=subject, body=body)
    return notified(order, notification)


def complete(order: Order, seams: Seams, _: Any) -> Done:
    return completed(Payment.objects.get(order=order), order)


# ---------------------------------------------------------------- the effects for a batch of orders

# Only the statements are shared: what each order's event says is the per-order effect's own (`reserved`, `charged`,
# `notified`, `completed` above), so a batch writes the events the per-order runner would.


def call_gateway_many(orders: list[Order], seams: Seams) -> list[str | Exception]:
    """`call_gateway` for the batch: the real gateway is asked for all of them in one call (`gateway.charge_many`);
    a gateway passed in (tests, lessons) once per order."""
    if seams.charge is gateway.charge:
        return gateway.charge_many(orders, seams.faults)
    return each(call_gateway, orders, seams)


_TAKE_STOCK = (
    sql.SQL(
        "UPDATE {product} SET stock = stock - taken.quantity"
        " FROM unnest(%(ids)s::bigint[], %(quantities)s::integer[]) AS taken(id, quantity)"
        " WHERE {product}.id = taken.id"
    )
    .format(product=sql.Identifier(Product._meta.db_table))
    .as_string()
)


def reserve_inventory_for(orders: list[Order], seams: Seams, _: dict[uuid.UUID, Any]) -> list[Done | Exception]:
    """`reserve_inventory` for the batch: its products locked in id order, each order's lines taken in turn from
    what the orders before it left (all or nothing per order, so an order out of stock takes nothing), then one
    UPDATE. Each order's event shows the stock as its own reservation left it, as the per-order runner would."""
    product_ids = sorted({line.product_id for order in orders for line in order.lines.all()})
    stock = dict(
        Product.objects.select_for_update().filter(pk__in=product_ids).order_by("pk").values_list("pk", "stock")
    )
    taken: Counter[int] = Counter()
    results: list[Done | Exception] = []
    for order in orders:
        wanted: Counter[int] = Counter()
        rows, failure = [], None
        for line in sorted(order.lines.all(), key=lambda item: item.product_id):
            left = stock.get(line.product_id, 0) - taken[line.product_id] - wanted[line.product_id] - line.quantity
            if left < 0:
                failure = out_of_stock(line)
                break
            wanted[line.product_id] += line.quantity
            rows.append(product_row(line.product_id, line.sku, left, -line.quantity))
        if failure is not None:
            results.append(failure)
            continue
        taken.update(wanted)
        results.append(reserved(order, rows))
    if taken:
        with connection.cursor() as cursor:
            cursor.execute(_TAKE_STOCK, {"ids": list(taken), "quantities": list(taken.values())})
    return results


def record_payments(orders: list[Order], seams: Seams, references: dict[uuid.UUID, Any]) -> list[Done | Exception]:
    """`record_payment` for the batch: one INSERT of their payments (each with its gateway's reference)."""
    payments = Payment.objects.bulk_create(
        Payment(order=order, amount=order.total, gateway_reference=references[order.pk]) for order in orders
    )
    return [charged(order, payment) for order, payment in zip(orders, payments, strict=True)]


def notify_customers(orders: list[Order], seams: Seams, _: dict[uuid.UUID, Any]) -> list[Done | Exception]:
    """`notify_customer` for the batch: each email sent (inside the transaction, as there), one INSERT of the
    notifications of those that went out."""
    sent: list[tuple[Order, str, str]] = []
    failed: dict[uuid.UUID, Exception] = {}
    for order in orders:
        try:
            subject, body = seams.notify(order)
        except OUTAGE:
            raise
        except Exception as exc:
            failed[order.pk] = exc
            continue
        sent.append((order, subject, body))
    notifications = Notification.objects.bulk_create(
        Notification(order=order, recipient=order.customer_email, subject=subject, body=body)
        for order, subject, body in sent
    )
    done = {
        order.pk: notified(order, notification) for (order, _, _), notification in zip(sent, notifications, strict=True)
    }
    return [failed.get(order.pk) or done[order.pk] for order in orders]


def complete_all(orders: list[Order], seams: Seams, _: dict[uuid.UUID, Any]) -> list[Done | Exception]:
    """`complete` for the batch: their payments in one read."""
    payments = {payment.order_id: payment for payment in Payment.objects.filter(order_id__in=[o.pk for o in orders])}
    return [
        completed(payments[order.pk], order)
        if order.pk in payments
        else Payment.DoesNotExist(f"no payment for order {order.pk}")
        for order in orders
    ]


STEPS: tuple[Step, ...] = (
    Step("reserve inventory", OrderStep.NONE, OrderStep.INVENTORY_RESERVED, EventKind.INVENTORY_RESERVED,
         reserve_inventory, reserve_inventory_for),
    # The gateway injects its own timeouts and declines, outside our transaction.
    Step("charge payment", OrderStep.INVENTORY_RESERVED, OrderStep.PAYMENT_CHARGED, EventKind.PAYMENT_CHARGED,
         record_payment, record_payments, outside=call_gateway, outside_many=call_gateway_many,
         transient_faults=False),
    Step("notify customer", OrderStep.PAYMENT_CHARGED, OrderStep.CUSTOMER_NOTIFIED, EventKind.CUSTOMER_NOTIFIED,
         notify_customer, notify_customers),
    Step("complete", OrderStep.CUSTOMER_NOTIFIED, None, EventKind.COMPLETED,
         complete, complete_all, transient_faults=False, crash_point=False),
)  # fmt: skip
STEP_BY_NAME = {step.name: step for step in STEPS}


def at_its_step(order: Order, step: Step) -> bool:
    """The step guard: the order is processing and at the step this one requires (a finished step never reruns)."""
    return order.status == OrderStatus.PROCESSING and order.step == step.requires


# The production way the steps run; the sandbox's unsafe modes swap a part (orders/sandbox/policies.py).
SAFE_STEPS: StepPolicy = StepPolicy(
    at=at_its_step,
    take_stock=change_stock,
    charge=charge_with_its_key,
    record_payment=create_payment,
    record_notification=create_notification,
)
