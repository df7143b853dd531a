"""The worker's batched receipt: the fresh orders it holds taken into `processing` in one transaction, then run
through the step table together (`Pipeline.run_items` in orders/runner.py, the same runner as for one order).

Only first deliveries of orders no worker has started are taken; the others are left to the per-order way
(`Pipeline.receive`, then `Pipeline.run`), whose receipt tells a redelivery, a retry and a duplicate apart. Used
only while no fault is injected and every mode is safe (`FaultInjector.batchable`). The batch's events are logged
at DEBUG; at INFO a batch logs one summary line (its orders by outcome and its duration).
"""

from __future__ import annotations

import logging
import time
import uuid

from django.db import transaction

from orders.models import EventKind, Order, OrderLine, OrderStatus, OrderStep
from orders.runner import Carrier, Ended, Item, Pipeline, locked_many
from orders.services import Change, Transition, attach_lines, cache_after_batch_commit, transition_many
from orders.steps import OUTAGE

__all__ = ["OUTAGE", "Item", "run_batch"]

log = logging.getLogger(__name__)


def run_batch(pipeline: Pipeline, items: list[Item]) -> list[Item]:
    """Take the fresh orders of `items` into `processing` in one transaction, then run every step for them
    (`Pipeline.run_items`: one transaction per step). Sets each taken item's `outcome` or `error`, and returns the
    items it did not take, for the per-order way. Database outages propagate."""
    started = time.monotonic()
    taken, left = _receive(items)
    if taken:
        pipeline.run_items(taken)
    _log_summary(items, left, time.monotonic() - started)
    return left


def _log_summary(items: list[Item], left: list[Item], seconds: float) -> None:
    """The batch's one INFO line: how many orders it ran and how each ended (its events are at DEBUG)."""
    ended = {kind: sum(1 for item in items if item.outcome and item.outcome.ended is kind) for kind in Ended}
    alone = len(left)
    errors = sum(1 for item in items if item.error is not None)
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


def _receive(items: list[Item]) -> tuple[list[Item], list[Item]]:
    """The items taken into `processing`, and those left to the per-order way."""
    try:
        taken, transitions = _take_in(items)
    except OUTAGE:
        raise
    except Exception:
        # The batch's statement failed (rolled back): each order is received on its own, the per-order way.
        log.warning("batched receive of %d orders failed; they go one by one", len(items), exc_info=True)
        return [], list(items)
    cache_after_batch_commit(transitions)
    kept = {id(item) for item in taken}
    return taken, [item for item in items if id(item) not in kept]


def _take_in(items: list[Item]) -> tuple[list[Item], list[Transition]]:
    """Take the fresh orders into `processing` (one transaction): one locked read, one read of their lines, one
    statement for their moves and `received` events."""
    transitions: list[Transition] = []
    with transaction.atomic():
        orders = locked_many([item.order_id for item in items])
        lines: dict[uuid.UUID, list[OrderLine]] = {}
        for line in OrderLine.objects.filter(order_id__in=list(orders)).order_by("pk"):
            lines.setdefault(line.order_id, []).append(line)
        changes, taken = [], []
        for item in items:
            order = orders.get(item.order_id)
            if order is None or not _fresh(order, item.message):
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
        item.order = moved.order
    return taken, transitions
