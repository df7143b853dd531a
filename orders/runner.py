"""The one runner of the step table (orders/steps.py), for a batch of one or of many: `Pipeline` receives a delivery's
order, runs every step it has not finished, one transaction per step, and records failures, retries and dead letters.
How it keeps a redelivery from repeating a step: docs/10-design-notes.md ("The steps").
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction

from orders.events import QueueSnapshot, product_row, record_event
from orders.failures import BrokenInvariant, PermanentFailure, TransientFailure
from orders.models import EventKind, Order, OrderLine, OrderStatus, OrderStep
from orders.services import (
    Change,
    Transition,
    attach_lines,
    cache_after_batch_commit,
    cache_after_commit,
    transition_many,
    transition_order,
)
from orders.steps import OUTAGE, SAFE_STEPS, STEPS, Done, Seams, Step, change_stock, each

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
            transitions = _moves(step, changes, log_level)
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


def _moves(step: Step, changes: list[Change], log_level: int) -> list[Transition]:
    """The orders moved to the status this step leaves them in, with their events: one order by the per-order
    statement (`transition_order`, the cheaper one), several by one statement for all (`transition_many`)."""
    if len(changes) != 1:
        return transition_many(changes, to=step.target, kind=step.kind, log_level=log_level) if changes else []
    change = changes[0]
    transition = transition_order(
        change.order,
        to=step.target,
        kind=step.kind,
        message=change.message,
        queue=change.queue,
        rows=change.rows,
        log_level=log_level,
        **change.changes,
    )
    return [transition]


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
