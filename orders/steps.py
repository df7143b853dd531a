"""An order's processing steps, as one table and one runner.

Each step is one transaction that locks the order row, checks that the order is at the step the table says it
requires (a guarded update), does the step's effect and records an event. A redelivered message therefore resumes
at the first unfinished step and never repeats a finished one; the unique payment row makes a double charge
impossible even if this logic were wrong, and the gateway's idempotency key makes the provider charge once too.
Redis writes happen after each commit. Each row also says how its step runs for a batch of orders (`effect_many`,
`outside_many`), which orders/batch.py runs.

The worker hands each delivery here (`Pipeline.receive`, then `Pipeline.run`) and turns the outcome into an ack,
a retry or a dead letter; nothing here knows about RabbitMQ beyond the facts a delivery carries (`Carrier`).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from psycopg import sql

from orders import gateway, notifications
from orders.events import QueueSnapshot, RowSnapshot, notification_row, payment_row, product_row, record_event
from orders.failures import (
    BrokenInvariant,
    FaultInjector,
    OutOfStock,
    PermanentFailure,
    TransientFailure,
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
from orders.services import Transition, attach_lines, cache_after_commit, transition_order


class Carrier(Protocol):
    """What the steps need to know about the message that brought the order (the worker's Delivery has it)."""

    queue: str
    redelivered: bool

    @property
    def delivery_count(self) -> int: ...

    @property
    def retries(self) -> int: ...

    def snapshot(self, note: str = "") -> QueueSnapshot: ...


class UnknownOrder(Exception):
    """The message names an order that does not exist."""


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


# ---------------------------------------------------------------- the runner


class Ended(Enum):
    DONE = "done"  # every step has finished (now or before)
    FAILED = "failed"  # a permanent failure, recorded: the order is `failed`
    TRANSIENT = "transient"  # a step failed in a way worth retrying: the caller schedules it or gives up


@dataclass(frozen=True)
class Outcome:
    ended: Ended
    step: str = ""
    error: Exception | None = None


class Pipeline:
    """Runs an order's steps for one delivery. One instance per worker; safe to share between its threads."""

    def __init__(self, *, seams: Seams, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.seams = seams
        self.should_stop = should_stop

    def receive(self, order_id: uuid.UUID, message: Carrier) -> Transition | None:
        """Take the order into `processing` and count the attempt; raises UnknownOrder. Returns None when the order
        is already terminal (a duplicate delivery, recorded as such)."""
        _lines.entry = None
        with transaction.atomic():
            try:
                order = _locked(order_id)
            except Order.DoesNotExist:
                raise UnknownOrder(f"unknown order {order_id}") from None
            if order.is_terminal:
                record_event(
                    order,
                    EventKind.DUPLICATE_IGNORED,
                    f"Delivery #{message.delivery_count} ignored: the order is already {order.status}.",
                    queue=message.snapshot(),
                )
                return None
            if order.status == OrderStatus.RETRYING or message.retries:
                kind = EventKind.RECEIVED
                text = f"Retry {message.retries} received back from the delay queue; resuming."
            elif message.redelivered or order.status == OrderStatus.PROCESSING or order.step != OrderStep.NONE:
                # The broker handed this message out before without an ack (a worker died or lost its channel).
                kind = EventKind.REDELIVERED
                text = (
                    f"Redelivered (delivery #{message.delivery_count}); resuming after step "
                    f"'{order.get_step_display()}'."
                    if order.step != OrderStep.NONE
                    else f"Redelivered (delivery #{message.delivery_count}); no step had finished yet."
                )
            else:
                kind, text = EventKind.RECEIVED, f"Received by a worker from {message.queue}."
            transition = transition_order(
                order,
                to=OrderStatus.PROCESSING,
                kind=kind,
                message=text,
                queue=message.snapshot(),
                attempts=order.attempts + 1,
            )
        cache_after_commit([transition])
        return transition

    def run(self, order_id: uuid.UUID, message: Carrier) -> Outcome:
        """Every step the order has not finished, in order. A permanent failure fails the order (stock released);
        a transient one is handed back to the caller with the step it hit.

        The sandbox's unsafe step_guards=off swaps the guard (orders/sandbox/policies.py): every step runs on every
        delivery, finished or not, so a redelivery reserves the stock again, charges again (without a key) and emails
        again."""
        for step in STEPS:
            self.wait_before_step(order_id, step.name, message)
            try:
                self.run_step(step, order_id, message)
            except PermanentFailure as exc:
                self.fail(order_id, str(exc), message)
                return Outcome(Ended.FAILED, step.name, exc)
            except TransientFailure as exc:
                return Outcome(Ended.TRANSIENT, step.name, exc)
        return Outcome(Ended.DONE)

    def run_step(self, step: Step, order_id: uuid.UUID, message: Carrier) -> Transition | None:
        """One guarded step. Returns None, changing nothing, when the order is not at the step this one requires.
        The step policy in effect now (`FaultInjector.policy`: `SAFE_STEPS` but in a sandbox mode) runs it."""
        seams = replace(self.seams, policy=self.seams.faults.policy())
        at = seams.policy.at
        prepared = None
        if step.outside is not None:
            # An unlocked read is enough to skip a finished step; the guard under the lock below is the real check
            # (a call made needlessly by a racing worker is harmless: it repeats an idempotent request).
            order = _unlocked(order_id)
            if not at(order, step):
                return None
            prepared = step.outside(order, seams)
        with transaction.atomic():
            order = _locked(order_id)
            if not at(order, step):
                return None
            seams.faults.before_step(step.name, transient=step.transient_faults)  # the sandbox's bug and timeout
            done = step.effect(order, seams, prepared)
            transition = transition_order(
                order,
                to=done.to,
                kind=step.kind,
                message=done.message,
                queue=message.snapshot(),
                rows=done.rows,
                **step.fields(done),
            )
            # The sandbox's crash: it rolls the step back (stock, payment row, notification); the redelivery redoes
            # it once.
            seams.faults.inside_step(step.name, crash_point=step.crash_point)
        cache_after_commit([transition])
        return transition

    def wait_before_step(self, order_id: uuid.UUID, step: str, message: Carrier) -> None:
        """Sandbox: the step delay, and in step-by-step mode, wait for 'Next step' on the journey page."""
        self.seams.faults.wait_before_step(
            order_id, step, should_stop=self.should_stop, announce=lambda: self._announce_wait(order_id, step, message)
        )

    def _announce_wait(self, order_id: uuid.UUID, step: str, message: Carrier) -> None:
        with transaction.atomic():
            order = _locked(order_id)
            event = record_event(
                order,
                EventKind.STEP_WAITING,
                f"Step-by-step mode: waiting for 'Next step' before '{step}'. The message is unacked meanwhile.",
                queue=message.snapshot(),
            )
        cache_after_commit([Transition(order=order, event=event)])

    # ------------------------------------------------------------ failures

    def fail(self, order_id: uuid.UUID, reason: str, message: Carrier) -> Transition | None:
        """Permanent failure: status `failed` with the reason; stock reserved by this order is released."""
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING:
                return None
            released, rows = "", []
            if order.step != OrderStep.NONE:
                for line in sorted(order.lines.all(), key=lambda item: item.product_id):
                    stock = change_stock(line.product_id, line.quantity)
                    if stock is None:  # adding cannot fail the check, and a line's product is PROTECTed
                        raise BrokenInvariant(f"product {line.product_id} of a line of order {order.pk} is gone")
                    rows.append(product_row(line.product_id, line.sku, stock, line.quantity))
                released = " Reserved stock released."
            transition = transition_order(
                order,
                to=OrderStatus.FAILED,
                kind=EventKind.FAILED,
                message=f"Failed: {reason}.{released}",
                queue=message.snapshot(),
                rows=rows,
                failure_reason=reason,
            )
        cache_after_commit([transition])
        return transition

    # The three below record where the message goes next, not where it came from: the caller (the transport side)
    # knows the delay queue or dead-letter queue it hands the message on to, and passes that queue's snapshot.

    def retry_scheduled(self, order_id: uuid.UUID, text: str, queue: QueueSnapshot) -> Transition | None:
        """A transient failure the caller will retry: the order waits as `retrying`, keeping its finished steps."""
        return self._mark(order_id, OrderStatus.RETRYING, EventKind.RETRY_SCHEDULED, text, "", queue)

    def gave_up(self, order_id: uuid.UUID, reason: str, text: str, queue: QueueSnapshot) -> Transition | None:
        """The last retry failed: the order is `dead_lettered` (with its finished steps) until someone replays it."""
        return self._mark(order_id, OrderStatus.DEAD_LETTERED, EventKind.DEAD_LETTERED, text, reason, queue)

    def _mark(
        self, order_id: uuid.UUID, status: OrderStatus, kind: EventKind, text: str, reason: str, queue: QueueSnapshot
    ) -> Transition | None:
        with transaction.atomic():
            order = _locked(order_id)
            if order.status != OrderStatus.PROCESSING:
                return None
            changes: dict[str, Any] = {"failure_reason": reason} if reason else {}
            transition = transition_order(order, to=status, kind=kind, message=text, queue=queue, **changes)
        cache_after_commit([transition])
        return transition

    def dead_lettered_by_broker(self, order_id: uuid.UUID, reason: str, queue: QueueSnapshot) -> Transition | None:
        """The broker dead-lettered the order's message by itself (its delivery limit: it crashed workers
        repeatedly). Mark the order `dead_lettered` so it shows up for replay."""
        with transaction.atomic():
            try:
                order = _locked(order_id)
            except Order.DoesNotExist:
                return None
            if order.status not in (OrderStatus.PROCESSING, OrderStatus.QUEUED, OrderStatus.PENDING):
                return None
            transition = transition_order(
                order,
                to=OrderStatus.DEAD_LETTERED,
                kind=EventKind.DEAD_LETTERED,
                message=f"Dead-lettered by RabbitMQ: {reason}. Replay it once the fault is fixed.",
                queue=queue,
                failure_reason=reason,
            )
        cache_after_commit([transition])
        return transition


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


# The lines of the order this thread is working on. A delivery runs start to finish on one step thread, and an
# order's lines never change after it is accepted, so each delivery reads them once instead of once per step.
_lines = threading.local()


def _with_lines(order: Order) -> Order:
    cached = getattr(_lines, "entry", None)
    if cached is None or cached[0] != order.pk:
        cached = _lines.entry = (order.pk, list(OrderLine.objects.filter(order_id=order.pk).order_by("pk")))
    return attach_lines(order, cached[1])


def _locked(order_id: uuid.UUID) -> Order:
    """The order, its row locked until the step's transaction ends, with its lines."""
    return _with_lines(Order.objects.select_for_update(of=("self",)).get(pk=order_id))


def _unlocked(order_id: uuid.UUID) -> Order:
    return _with_lines(Order.objects.get(pk=order_id))
