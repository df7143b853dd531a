"""An order's processing steps: the step table (`STEPS`) and its one runner (`Pipeline`), for a batch of one or of
many. Each step is one transaction that locks the order, checks that it is at the step the table requires (the
guard), does the step's effect and records an event; Redis is written after each commit. Why a redelivery can never
repeat a step or charge twice: docs/10-design-notes.md ("The steps").
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from django.conf import settings
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
from orders.services import (
    Change,
    Transition,
    attach_lines,
    cache_after_batch_commit,
    cache_after_commit,
    transition_many,
    transition_order,
)

log = logging.getLogger(__name__)


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


@dataclass
class Item:
    """One delivery's order as the runner takes it through the steps, and how far it got."""

    order_id: uuid.UUID
    message: Carrier
    order: Order | None = None  # as the last step that read it left it (lines attached)
    outcome: Outcome | None = None  # how its steps ended, once they have
    error: Exception | None = None  # an unexpected exception: `Pipeline.run` raises it
    failure: PermanentFailure | None = None  # recorded with `Pipeline.fail` once the step's transaction is over
    lines: list[OrderLine] | None = None  # read once per delivery: an order's lines never change after it is accepted

    @property
    def running(self) -> bool:
        return self.outcome is None and self.error is None and self.failure is None


class Pipeline:
    """Runs the step table for the orders a worker holds: one transaction per step, for a batch of one or of many.
    One instance per worker; safe to share between its threads."""

    def __init__(self, *, seams: Seams, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.seams = seams
        self.should_stop = should_stop

    def receive(self, order_id: uuid.UUID, message: Carrier) -> Transition | None:
        """Take the order into `processing` and count the attempt; raises UnknownOrder. Returns None when the order
        is already terminal (a duplicate delivery, recorded as such)."""
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

    def run(self, order_id: uuid.UUID, message: Carrier, order: Order | None = None) -> Outcome:
        """Every step the order has not finished, in order: `run_items` for a batch of one. A permanent failure
        fails the order (stock released); a transient one is handed back with the step it hit; an unexpected
        exception is raised. `order`: the order as `receive` left it, so its lines are not read again.

        The sandbox's unsafe step_guards=off swaps the guard (orders/sandbox/policies.py): every step runs on every
        delivery, finished or not, so a redelivery reserves the stock again, charges again (without a key) and emails
        again."""
        item = Item(order_id=order_id, message=message, order=order)
        self.run_items([item])
        if item.error is not None:
            raise item.error
        if item.outcome is None:
            raise BrokenInvariant(f"order {order_id}: the steps ended without an outcome")
        return item.outcome

    def run_items(self, items: list[Item]) -> None:
        """Every step the items' orders have not finished, one transaction per step for all of them. Sets each
        item's `outcome` or `error`; database outages and `Interrupted` (the worker stopping) propagate. Events are
        logged at INFO for an order run on its own, at DEBUG in a batch (orders/batch.py logs its summary)."""
        log_level = logging.INFO if len(items) == 1 else logging.DEBUG
        for step in STEPS:
            running = [item for item in items if item.running]
            if not running:
                break
            for item in running:
                self.wait_before_step(item.order_id, step.name, item.message)
            self.run_step(step, running, log_level=log_level)
        for item in items:
            if item.running:
                item.outcome = Outcome(Ended.DONE)

    def run_step(self, step: Step, items: list[Item], *, log_level: int = logging.INFO) -> None:
        """One guarded step for the items' orders: the call to another system (if the step makes one), one
        transaction for all of them, the cache writes after its commit, then the permanent failures recorded one
        by one. An order that is not at the step this one requires is left as it is: a finished step never reruns.
        The step policy in effect now (`FaultInjector.policy`: `SAFE_STEPS` but in a sandbox mode) runs it."""
        seams = replace(self.seams, policy=self.seams.faults.policy())
        _read_lines(items)
        prepared = self._ask_outside(step, items, seams)
        entered = [item for item in items if item.running and (step.outside is None or item.order_id in prepared)]
        self._enter(seams, step, entered, prepared, log_level)
        for item in items:
            if item.failure is not None:
                self._record_failure(step, item)

    def _ask_outside(self, step: Step, items: list[Item], seams: Seams) -> dict[uuid.UUID, Any]:
        """The call to the other system, before the step's transaction and outside it: each asked order's answer by
        order id. Only orders at the step are asked (an unlocked read is enough to skip a finished step; the guard
        under the lock is the real check, and a call made needlessly by a racing worker repeats an idempotent
        request). An order whose answer is an exception is split out with it."""
        if step.outside is None:
            return {}
        current = _unlocked([item.order_id for item in items])
        asking = [item for item in items if item.order_id in current and seams.policy.at(current[item.order_id], step)]
        orders = [attach_lines(current[item.order_id], item.lines or []) for item in asking]
        answers = step.ask_outside_many(orders, seams) if _batched(orders, seams) else each(step.outside, orders, seams)
        prepared: dict[uuid.UUID, Any] = {}
        for item, answer in zip(asking, answers, strict=True):
            if isinstance(answer, Exception):
                _split(item, answer, step)
            else:
                prepared[item.order_id] = answer
        return prepared

    def _enter(
        self, seams: Seams, step: Step, entered: list[Item], prepared: dict[uuid.UUID, Any], log_level: int
    ) -> None:
        """The step's transaction for the entered items, then the cache writes. An order whose step raises is
        split out with its exception; if the transaction of several fails, it is rolled back for all of them and
        each runs again on its own, where its own exception has its own verdict."""
        if not entered:
            return
        try:
            transitions = self._commit_step(seams, step, entered, prepared, log_level)
        except OUTAGE:
            raise
        except Exception as exc:
            if len(entered) == 1:
                _split(entered[0], exc, step)
                return
            log.warning("step '%s' failed for a batch; its %d orders go one by one", step.name, len(entered),
                        exc_info=True)  # fmt: skip
            for item in entered:
                item.outcome, item.error, item.failure = None, None, None
                self._enter(seams, step, [item], prepared, log_level)
            return
        cache_after_batch_commit(transitions)

    def _commit_step(
        self, seams: Seams, step: Step, entered: list[Item], prepared: dict[uuid.UUID, Any], log_level: int
    ) -> list[Transition]:
        """The step's transaction: the orders locked (in id order) and guarded, the sandbox's checks, the effect,
        the moves with their events in one statement, the sandbox's crash point, the commit."""
        with transaction.atomic():
            ready = self._ready(seams, step, entered)
            orders = [order for _, order in ready]
            results = _effects(step, seams, orders, prepared)
            moving, changes = _changes(step, ready, results)
            # One step moves every order to the same status (complete: `completed`).
            transitions = (
                transition_many(changes, to=step.target, kind=step.kind, log_level=log_level) if changes else []
            )
            for _ in transitions:
                # The sandbox's crash: it rolls the step back (stock, payment row, notification) for every order in
                # it; each redelivery redoes it once.
                seams.faults.inside_step(step.name, crash_point=step.crash_point)
            if len(transitions) > 1 and step.name == settings.BATCH_PAUSE_AT:
                _park(step, transitions)
        for item, moved in zip(moving, transitions, strict=True):
            item.order = moved.order
        return transitions

    def _ready(self, seams: Seams, step: Step, entered: list[Item]) -> list[tuple[Item, Order]]:
        """The entered orders, locked, that are at the step (the guard) and pass the sandbox's bug and simulated
        timeout, with their lines."""
        locked = locked_many([item.order_id for item in entered])
        ready: list[tuple[Item, Order]] = []
        for item in entered:
            if item.order_id not in locked:
                item.error = Order.DoesNotExist(f"order {item.order_id} is gone")
                continue
            order = item.order = attach_lines(locked[item.order_id], item.lines or [])
            if not seams.policy.at(order, step):
                continue  # the step guard: not at this step (done before, or another worker has it)
            try:
                seams.faults.before_step(step.name, transient=step.transient_faults)
            except Exception as exc:
                _split(item, exc, step)
                continue
            ready.append((item, order))
        return ready

    def _record_failure(self, step: Step, item: Item) -> None:
        """After the failed step's rollback: the failure in a transaction of its own."""
        failure, item.failure = item.failure, None
        try:
            self.fail(item.order_id, str(failure), item.message)
        except OUTAGE:
            raise
        except Exception as exc:
            item.error = exc
            return
        item.outcome = Outcome(Ended.FAILED, step.name, failure)

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


def _locked(order_id: uuid.UUID) -> Order:
    """The order, its row locked until the transaction ends, with its lines."""
    order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
    return attach_lines(order, list(OrderLine.objects.filter(order_id=order_id).order_by("pk")))


def locked_many(order_ids: list[uuid.UUID]) -> dict[uuid.UUID, Order]:
    """The orders, their rows locked until the transaction ends, in id order: two batches (or a batch and a single
    order) sharing an order wait for each other instead of deadlocking."""
    orders = Order.objects.select_for_update(of=("self",)).filter(pk__in=order_ids).order_by("pk")
    return {order.pk: order for order in orders}


def _unlocked(order_ids: list[uuid.UUID]) -> dict[uuid.UUID, Order]:
    return {order.pk: order for order in Order.objects.filter(pk__in=order_ids)}


def _read_lines(items: list[Item]) -> None:
    """Each item's order lines: from the order `receive` left, or for the others in one read."""
    missing: list[uuid.UUID] = []
    for item in items:
        if item.lines is None and item.order is not None:
            item.lines = list(item.order.lines.all())
        elif item.lines is None:
            missing.append(item.order_id)
    if not missing:
        return
    lines: dict[uuid.UUID, list[OrderLine]] = {order_id: [] for order_id in missing}
    for line in OrderLine.objects.filter(order_id__in=missing).order_by("pk"):
        lines[line.order_id].append(line)
    for item in items:
        if item.lines is None:
            item.lines = lines[item.order_id]


def _batched(orders: list[Order], seams: Seams) -> bool:
    """Whether a step's batched form runs (`effect_many`, `outside_many`): for more than one order, under the
    production policy. One order, or a sandbox policy, runs each order's own form, the readable one."""
    return len(orders) > 1 and seams.policy is SAFE_STEPS


def _effects(step: Step, seams: Seams, orders: list[Order], prepared: dict[uuid.UUID, Any]) -> list[Done | Exception]:
    """What the step's effect did for each order, or the exception that takes it out of the step. One order's
    exception propagates (its step is rolled back); in a batch each order's own effect runs in a savepoint."""
    if _batched(orders, seams):
        return step.effect_many(orders, seams, prepared)
    if len(orders) == 1:
        return [step.effect(orders[0], seams, prepared.get(orders[0].pk))]
    results: list[Done | Exception] = []
    for order in orders:
        try:
            with transaction.atomic():
                results.append(step.effect(order, seams, prepared.get(order.pk)))
        except OUTAGE:
            raise
        except Exception as exc:
            results.append(exc)
    return results


def _changes(
    step: Step, ready: list[tuple[Item, Order]], results: list[Done | Exception]
) -> tuple[list[Item], list[Change]]:
    """The items whose effect went through and their moves; the others are split out."""
    moving: list[Item] = []
    changes: list[Change] = []
    for (item, order), done in zip(ready, results, strict=True):
        if isinstance(done, Exception):
            _split(item, done, step)
            continue
        moving.append(item)
        changes.append(
            Change(order=order, message=done.message, queue=item.message.snapshot(), rows=done.rows,
                   changes=step.fields(done))
        )  # fmt: skip
    return moving, changes


def _split(item: Item, exc: Exception, step: Step) -> None:
    """Take one order out of the step with the outcome its exception gives it: a permanent failure fails the order,
    a transient one is retried, anything else is unexpected. An outage propagates."""
    if isinstance(exc, OUTAGE):
        raise exc
    if isinstance(exc, PermanentFailure):
        item.failure = exc
    elif isinstance(exc, TransientFailure):
        item.outcome = Outcome(Ended.TRANSIENT, step.name, exc)
    else:
        item.error = exc


def _park(step: Step, transitions: list[Transition]) -> None:
    """Tests only (`ORDERPIPE_BATCH_PAUSE_AT`): in a batch of several, say which orders this step holds, then wait
    here, before the step's commit, until the process is killed, so a chaos test's SIGKILL lands exactly there."""
    log.warning(
        "batch: pause point %s reached with %d order(s): %s",
        step.name,
        len(transitions),
        " ".join(str(moved.order.pk) for moved in transitions),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    threading.Event().wait()
