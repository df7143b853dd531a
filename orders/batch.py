"""The step table of orders/steps.py run for every order a worker holds at once: one transaction per step.

Each row's `effect_many` shares the statements (one locked read of the orders in id order, one guarded multi-row
UPDATE with one INSERT of the events, one commit) while every order gets the events `Pipeline.run` would write.
An order whose step fails is split out without rolling back the others and gets the per-order outcome. What the
batch cannot take it leaves to the per-order runner (`Item.alone`): an order that is not fresh, one that moved
under us, and every order of a step whose batch statement failed (rolled back).

Used only while no fault is injected and every mode is safe (`FaultInjector.batchable`). The batch's events are
logged at DEBUG; at INFO a batch logs one summary line (its orders by outcome and its duration).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction

from orders.failures import BrokenInvariant, PermanentFailure, TransientFailure
from orders.models import EventKind, Order, OrderLine, OrderStatus, OrderStep
from orders.services import Change, Transition, attach_lines, cache_after_batch_commit, transition_many
from orders.steps import OUTAGE, STEPS, Carrier, Done, Ended, Outcome, Pipeline, Seams, Step

__all__ = ["OUTAGE", "Item", "run_batch"]

log = logging.getLogger(__name__)


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
    started = time.monotonic()
    _receive(items)
    for step in STEPS:
        running = [item for item in items if item.running]
        if not running:
            break
        _run_step(pipeline, step, running)
    for item in items:
        if item.running:
            item.outcome = Outcome(Ended.DONE)
    _log_summary(items, time.monotonic() - started)


def _log_summary(items: list[Item], seconds: float) -> None:
    """The batch's one INFO line: how many orders it ran and how each ended (its events are at DEBUG)."""
    ended = {kind: sum(1 for item in items if item.outcome and item.outcome.ended is kind) for kind in Ended}
    alone = sum(1 for item in items if item.alone)
    errors = sum(1 for item in items if item.error is not None and not item.alone)
    log.info(
        "batch: %d order(s) in %.1f ms: %d done, %d failed, %d to retry, %d left to the per-order steps, %d error(s)",
        len(items),
        seconds * 1000,
        ended[Ended.DONE],
        ended[Ended.FAILED],
        ended[Ended.TRANSIENT],
        alone,
        errors,
        extra={
            "orders": len(items),
            "duration_ms": round(seconds * 1000, 1),
            **{f"orders_{kind.value}": count for kind, count in ended.items()},
        },
    )


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
            transitions = transition_many(
                changes, to=OrderStatus.PROCESSING, kind=EventKind.RECEIVED, log_level=logging.DEBUG
            )
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
    """One step of the table for the running items: the outside call (if the step has one), one transaction for
    all of them, the cache writes after its commit, then the permanent failures recorded one by one."""
    prepared = _ask_outside(step, running, pipeline.seams)
    entered = [item for item in running if item.running]
    cache_after_batch_commit(_commit_step(pipeline.seams, step, entered, prepared))
    for item in running:
        if item.failure is not None:
            _record_failure(pipeline, step, item, item.failure)


def _ask_outside(step: Step, running: list[Item], seams: Seams) -> dict[uuid.UUID, Any]:
    """The call to the other system, before the step's transaction and outside it, as in `run_step`: each order's
    answer by order id; an order whose answer is an exception is split out."""
    if step.outside is None:
        return {}
    orders = [item.order for item in running if item.order is not None]
    if len(orders) != len(running):
        raise BrokenInvariant(f"{len(running) - len(orders)} running item(s) without their order")
    prepared: dict[uuid.UUID, Any] = {}
    for item, answer in zip(running, step.ask_outside_many(orders, seams), strict=True):
        if isinstance(answer, Exception):
            _split(item, answer, step)
        else:
            prepared[item.order_id] = answer
    return prepared


def _commit_step(seams: Seams, step: Step, entered: list[Item], prepared: dict[uuid.UUID, Any]) -> list[Transition]:
    """The step's transaction for the entered items: their moves, in one statement, of those whose checks and
    effect went through. If a statement fails, the step is rolled back and each order left to the per-order runner."""
    try:
        with transaction.atomic():
            ready = _ready(seams, step, entered)
            results = step.effect_many([order for _, order in ready], seams, prepared) if ready else []
            moving, changes = _changes(step, ready, results)
            # One step moves every order of the batch to the same status (complete: `completed`).
            transitions = (
                transition_many(changes, to=_target(step), kind=step.kind, log_level=logging.DEBUG) if changes else []
            )
            _before_commit(seams, step, transitions)
    except OUTAGE:
        raise
    except Exception:
        # A batch statement failed (or a check raised where only a crash was expected): the step is rolled back for
        # every order that entered it, and each runs again on its own, where its own exception has its own verdict.
        log.warning("batched step '%s' failed; its %d orders go one by one", step.name, len(entered), exc_info=True)
        for item in entered:
            item.alone, item.outcome, item.error, item.failure = True, None, None, None
        return []
    for item, moved in zip(moving, transitions, strict=True):
        item.order = moved.order
    return transitions


def _ready(seams: Seams, step: Step, entered: list[Item]) -> list[tuple[Item, Order]]:
    """The entered orders, locked, that are still at the step and pass the sandbox's checks, with their lines."""
    locked = _locked([item.order_id for item in entered]) if entered else {}
    ready: list[tuple[Item, Order]] = []
    for item in entered:
        order = locked.get(item.order_id)
        if order is None or not (order.status == OrderStatus.PROCESSING and order.step == step.requires):
            item.alone = True  # moved under us (another worker took it): the per-order guards decide
            continue
        try:
            _check(seams, step)
        except Exception as exc:
            _split(item, exc, step)
            continue
        ready.append((item, attach_lines(order, item.lines)))
    return ready


def _check(seams: Seams, step: Step) -> None:
    """The sandbox's bug and simulated timeout, before the step changes anything, as in `run_step`."""
    seams.faults.before_step(step.name, transient=step.transient_faults)


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
            Change(
                order=order,
                message=done.message,
                queue=item.message.snapshot(),
                rows=done.rows,
                changes=step.fields(done),
            )
        )
    return moving, changes


def _before_commit(seams: Seams, step: Step, transitions: list[Transition]) -> None:
    """The sandbox's crash point, and the tests' pause point, inside the step's transaction."""
    for _ in transitions:
        # A crash here rolls the whole step back for the batch: each redelivery redoes it once.
        seams.faults.inside_step(step.name, crash_point=step.crash_point)
    if transitions and step.name == settings.BATCH_PAUSE_AT:
        _park(step, transitions)


def _record_failure(pipeline: Pipeline, step: Step, item: Item, failure: PermanentFailure) -> None:
    """As `Pipeline.run` does after the failed step's rollback: the failure in a transaction of its own."""
    try:
        pipeline.fail(item.order_id, str(failure), item.message)
    except OUTAGE:
        raise
    except Exception as exc:
        item.failure, item.error = None, exc
        return
    item.outcome = Outcome(Ended.FAILED, step.name, failure)


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


def _target(step: Step) -> OrderStatus:
    return OrderStatus.COMPLETED if step.then is None else OrderStatus.PROCESSING
