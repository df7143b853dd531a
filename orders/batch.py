"""Batched steps: the steps of orders/steps.py for every order a worker holds at once, one transaction per step.

The per-order runner (`Pipeline.run`) is the reference; this is the same table run for a batch, so the cost of a
transaction, a round trip and a commit is shared by the batch instead of paid by each order:

- one locked read of the batch's orders (in id order, so two batches cannot deadlock), one guarded multi-row
  UPDATE with one multi-row INSERT of the events (`services.transition_many`: still one event per order per step,
  each with its own db/queue/cache snapshot), and one commit per step;
- stock reserved for the whole batch with one locked read of its products, in id order (the per-order path locks
  them in the same order), and one UPDATE;
- the Redis writes after each commit in one pipelined round trip, and the cache states in one UPDATE.

An order whose step fails is split out without rolling back the others: its check (a sandbox bug, a simulated
timeout), its gateway call and its email happen before the batch's statements, so nothing of it is written. It then
gets the outcome the per-order runner gives: a permanent failure is recorded with `Pipeline.fail` after the batch's
commit (stock released), a transient one comes back for a retry, an unexpected exception comes back to the caller.
What the batch cannot take it leaves to the per-order runner (`Item.alone`): an order that is not fresh (a
redelivery, a retry, a terminal or unknown order), one that moved under us, and, if a batch statement itself fails
(a unique key, say), every order of that step: it is rolled back and each is run again the per-order way.

Only used while no fault is injected and every mode is safe (`FaultInjector.batchable`); the consumer sends each
delivery the per-order way otherwise.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from psycopg import sql

from orders import gateway
from orders.events import product_row
from orders.failures import BrokenInvariant, PermanentFailure, TransientFailure
from orders.models import EventKind, Notification, Order, OrderLine, OrderStatus, OrderStep, Payment, Product
from orders.services import Change, Transition, attach_lines, cache_after_batch_commit, transition_many
from orders.steps import (
    STEPS,
    Carrier,
    Done,
    Ended,
    Outcome,
    Pipeline,
    Seams,
    Step,
    charged,
    completed,
    notified,
    out_of_stock,
    reserved,
)

log = logging.getLogger(__name__)

# An outage, not a failure of one order: it propagates, and the caller keeps the messages until the database answers.
OUTAGE = (OperationalError, InterfaceError)


@dataclass
class Item:
    """One order of the batch, and how far it got."""

    order_id: uuid.UUID
    message: Carrier
    order: Order | None = None  # as the last committed step left it (lines attached)
    received: bool = False  # the batch took it into `processing`
    alone: bool = False  # left to the per-order runner (received or not: see `received`)
    outcome: Outcome | None = None  # how its steps ended, once they have
    error: Exception | None = None  # an unexpected exception: the caller returns the message
    failure: PermanentFailure | None = None  # recorded with Pipeline.fail once the step's batch has committed
    lines: list[OrderLine] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.received and not self.alone and self.outcome is None and self.error is None and not self.failure


def run_batch(pipeline: Pipeline, items: list[Item]) -> None:
    """Take the fresh orders of `items` into `processing` and run every step for them, one transaction per step.
    Sets each item's `outcome`, `error` or `alone`. Database outages propagate."""
    _receive(items)
    for step in STEPS:
        running = [item for item in items if item.running]
        if not running:
            break
        _run_step(pipeline, step, running)
    for item in items:
        if item.running:
            item.outcome = Outcome(Ended.DONE)


def _fresh(order: Order, message: Carrier) -> bool:
    """A first delivery of an order no worker has started: the plain `received` case of `Pipeline.receive`."""
    return (
        order.status in (OrderStatus.PENDING, OrderStatus.QUEUED)
        and order.step == OrderStep.NONE
        and not message.redelivered
        and not message.retries
    )


def _locked(order_ids: list[uuid.UUID]) -> dict[uuid.UUID, Order]:
    """The orders, their rows locked until the transaction ends, in id order: two batches (or a batch and a single
    order) sharing an order wait for each other instead of deadlocking."""
    orders = Order.objects.select_for_update(of=("self",)).filter(pk__in=order_ids).order_by("pk")
    return {order.pk: order for order in orders}


def _receive(items: list[Item]) -> None:
    try:
        transitions = _take_in(items)
    except OUTAGE:
        raise
    except Exception:
        # The batch's statement failed (rolled back): each order is received on its own, the per-order way.
        log.warning("batched receive of %d orders failed; they go one by one", len(items), exc_info=True)
        for item in items:
            item.alone, item.received = True, False
        return
    cache_after_batch_commit(transitions)


def _take_in(items: list[Item]) -> list[Transition]:
    """Take the fresh orders into `processing` (one transaction): one locked read, one read of their lines, one
    statement for their moves and `received` events."""
    transitions: list[Transition] = []
    with transaction.atomic():
        orders = _locked([item.order_id for item in items])
        lines: dict[uuid.UUID, list[OrderLine]] = {}
        for line in OrderLine.objects.filter(order_id__in=list(orders)).order_by("pk"):
            lines.setdefault(line.order_id, []).append(line)
        changes, taken = [], []
        for item in items:
            order = orders.get(item.order_id)
            if order is None or not _fresh(order, item.message):
                item.alone = True
                continue
            item.lines = lines.get(order.pk, [])
            changes.append(
                Change(
                    order=attach_lines(order, item.lines),
                    message=f"Received by a worker from {item.message.queue}.",
                    queue=item.message.snapshot(),
                    changes={"attempts": order.attempts + 1},
                )
            )
            taken.append(item)
        if changes:
            transitions = transition_many(changes, to=OrderStatus.PROCESSING, kind=EventKind.RECEIVED)
    for item, moved in zip(taken, transitions, strict=True):
        item.received, item.order = True, moved.order
    return transitions


def _split(item: Item, exc: Exception, step: Step) -> None:
    """Take one order out of the batch with the outcome its exception gives it in `Pipeline.run`."""
    if isinstance(exc, OUTAGE):
        raise exc
    if isinstance(exc, PermanentFailure):
        item.failure = exc
    elif isinstance(exc, TransientFailure):
        item.outcome = Outcome(Ended.TRANSIENT, step.name, exc)
    else:
        item.error = exc


def _run_step(pipeline: Pipeline, step: Step, running: list[Item]) -> None:
    seams = pipeline.seams
    prepared: dict[uuid.UUID, Any] = {}
    if step.outside is not None:
        # The call to the other system, before the step's transaction and outside it, as in `run_step`.
        orders = [item.order for item in running if item.order is not None]
        if len(orders) != len(running):
            raise BrokenInvariant(f"{len(running) - len(orders)} running item(s) without their order")
        answers = _call_outside(step, orders, seams)
        for item, answer in zip(running, answers, strict=True):
            if isinstance(answer, Exception):
                _split(item, answer, step)
            else:
                prepared[item.order_id] = answer
    entered = [item for item in running if item.running]
    transitions: list[Transition] = []
    moving: list[Item] = []
    try:
        with transaction.atomic():
            locked = _locked([item.order_id for item in entered]) if entered else {}
            ready: list[tuple[Item, Order]] = []
            for item in entered:
                order = locked.get(item.order_id)
                if order is None or not (order.status == OrderStatus.PROCESSING and order.step == step.requires):
                    item.alone = True  # moved under us (another worker took it): the per-order guards decide
                    continue
                try:
                    seams.faults.maybe_hit_bug(step.name)
                    if step.transient_faults:
                        seams.faults.maybe_fail_transiently(step.name)
                except Exception as exc:
                    _split(item, exc, step)
                    continue
                ready.append((item, attach_lines(order, item.lines)))
            results = EFFECTS[step.name]([order for _, order in ready], seams, prepared) if ready else []
            changes = []
            for (item, order), done in zip(ready, results, strict=True):
                if isinstance(done, Exception):
                    _split(item, done, step)
                    continue
                moving.append(item)
                changes.append(
                    Change(
                        order=order,
                        message=done.message,
                        queue=item.message.snapshot(),
                        rows=done.rows,
                        changes=done.changes if step.then is None else {"step": step.then, **done.changes},
                    )
                )
            if changes:
                # One step moves every order of the batch to the same status (complete: `completed`).
                transitions = transition_many(changes, to=_target(step), kind=step.kind)
            if step.crash_point:
                for _ in transitions:
                    # A crash here rolls the whole step back for the batch: each redelivery redoes it once.
                    seams.faults.maybe_crash(step.name)
            if transitions and step.name == settings.BATCH_PAUSE_AT:
                _park(step, transitions)
    except OUTAGE:
        raise
    except Exception:
        # A batch statement failed (or a check raised where only a crash was expected): the step is rolled back for
        # every order that entered it, and each runs again on its own, where its own exception has its own verdict.
        log.warning("batched step '%s' failed; its %d orders go one by one", step.name, len(entered), exc_info=True)
        for item in entered:
            item.alone, item.outcome, item.error, item.failure = True, None, None, None
        transitions, moving = [], []
    for item, moved in zip(moving, transitions, strict=True):
        item.order = moved.order
    cache_after_batch_commit(transitions)
    for item in running:
        if item.failure is not None:
            # As `Pipeline.run` does after the failed step's rollback: the failure in a transaction of its own.
            try:
                pipeline.fail(item.order_id, str(item.failure), item.message)
            except OUTAGE:
                raise
            except Exception as exc:
                item.failure, item.error = None, exc
                continue
            item.outcome = Outcome(Ended.FAILED, step.name, item.failure)


def _park(step: Step, transitions: list[Transition]) -> None:
    """Tests only (`ORDERPIPE_BATCH_PAUSE_AT`): say which orders this batch holds, then wait here, before the step's
    commit, until the process is killed, so a chaos test's SIGKILL lands exactly there."""
    log.warning(
        "batch: pause point %s reached with %d order(s): %s",
        step.name,
        len(transitions),
        " ".join(str(moved.order.pk) for moved in transitions),
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    threading.Event().wait()


def _call_outside(step: Step, orders: list[Order], seams: Seams) -> list[Any]:
    """Each order's answer from the step's other system (or the exception that is its answer). The real gateway is
    asked for all of them in one call (`gateway.charge_many`); a gateway passed in (tests, lessons) once per order."""
    assert step.outside is not None
    if step.name == "charge payment" and seams.charge is gateway.charge:
        return gateway.charge_many(orders, seams.faults)
    answers: list[Any] = []
    for order in orders:
        try:
            answers.append(step.outside(order, seams))
        except OUTAGE:
            raise
        except Exception as exc:
            answers.append(exc)
    return answers


def _target(step: Step) -> OrderStatus:
    return OrderStatus.COMPLETED if step.then is None else OrderStatus.PROCESSING


# ---------------------------------------------------------------- the batched effects

# A step's effect for the batch's orders, locked and at the step: for each, what it did or the exception that takes
# it out of the batch. Only the effects' statements are shared; what each order's event says is the per-order
# effect's own (`reserved`, `charged`, `notified`, `completed` in orders/steps.py).
BatchEffect = Callable[[list[Order], Seams, dict[uuid.UUID, Any]], list[Done | Exception]]

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


EFFECTS: dict[str, BatchEffect] = {
    "reserve inventory": reserve_inventory_for,
    "charge payment": record_payments,
    "notify customer": notify_customers,
    "complete": complete_all,
}


def check_effects(effects: dict[str, BatchEffect], steps: Sequence[Step]) -> None:
    """Every step of the table has its batched effect, and every effect its step."""
    if set(effects) != {step.name for step in steps}:
        raise BrokenInvariant(f"batched effects {sorted(effects)} do not match the steps {[s.name for s in steps]}")


check_effects(EFFECTS, STEPS)
