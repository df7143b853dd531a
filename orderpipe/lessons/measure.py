"""What a lesson's checkpoint panel shows, measured from real state: the orders of one phase of a lesson run (found
by their customer email, `run_email`), PostgreSQL's rows, the gateway's ledger, the workers' heartbeats and the
queue depths the relay and workers last observed. The counting itself is the unsafe modes' checkpoint functions
(orders/checkpoints.py for what the domain can count, worker/checkpoints.py for the broker's side of "lost");
this module scopes them to a phase and adds what the sweeper saw.

"Lost" is the honest count. An order is lost when it was accepted, is not in a terminal state, and its message is
nowhere: no unsent outbox row (the relay would publish it), no journey movement for a few seconds, not held by a
live worker (each heartbeat lists what it holds), and not in any queue. A queue's ready count cannot say whose
messages it holds, so while the main queue or a retry tier holds any, or their depths were not observed recently,
nothing is called lost: those orders are "not yet known" and the count is late, never wrong. And an order the
sweeper re-sent (`resent` event) was lost too, whatever it became afterwards: it is counted, and shown as "lost,
later re-sent by the sweeper".
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from django.db.models import Count, Max, Min, QuerySet
from django.utils import timezone

from orders import cache, checkpoints
from orders.models import EventKind, Order, OrderEvent, OrderStatus
from worker.checkpoints import lost_orders
from worker.models import WorkerHeartbeat

# Every order a lesson places goes to an address of this domain; `run_email` names the run and phase in it.
LESSON_DOMAIN = "lessons.example.com"
# The flaky client's orders carry `note="flaky <client run> request <n>"`: one logical request each.
FLAKY_NOTE_PREFIX = "flaky "
# A worker that reported within this long is running (its heartbeat comes about once a second).
WORKER_ALIVE = timedelta(seconds=5)


def run_email(slug: str, run: str, phase: str) -> str:
    """The customer email of every order one phase of one lesson run places: `retries-3f9a1c-flaky@lessons…`."""
    return f"{slug}-{run}-{phase}@{LESSON_DOMAIN}"


def run_orders(slug: str, runs: list[str]) -> QuerySet[Order]:
    """Every order of these runs of a lesson, whatever the phase (what a reset deletes)."""
    orders = Order.objects.none()
    for run in runs:
        orders |= Order.objects.filter(
            customer_email__startswith=f"{slug}-{run}-", customer_email__endswith=f"@{LESSON_DOMAIN}"
        )
    return orders


def all_lesson_orders() -> QuerySet[Order]:
    return Order.objects.filter(customer_email__endswith=f"@{LESSON_DOMAIN}")


def measure(email: str) -> dict[str, Any]:
    """The numbers of one phase: every count a lesson may show (each lesson picks the ones it needs)."""
    orders = Order.objects.filter(customer_email=email)
    by_status = dict(orders.order_by().values_list("status").annotate(n=Count("pk")))
    accepted = sum(by_status.values())
    events = OrderEvent.objects.filter(order__in=orders)
    resent = {str(pk) for pk in events.filter(kind=EventKind.RESENT).values_list("order_id", flat=True)}
    lost = lost_orders(orders)
    nowhere = {str(pk) for pk in lost.order_ids}
    flaky = orders.filter(note__startswith=FLAKY_NOTE_PREFIX)
    requests = flaky.values("note").distinct().count()
    span = orders.filter(status=OrderStatus.COMPLETED).aggregate(first=Min("created_at"), last=Max("completed_at"))
    completed = by_status.get(OrderStatus.COMPLETED, 0)
    seconds = (span["last"] - span["first"]).total_seconds() if completed > 1 and span["first"] else 0.0
    terminal = sum(by_status.get(status, 0) for status in OrderStatus.terminal())
    # Which worker took each order's first delivery (the worker's name is in the received event's queue snapshot):
    # lesson 8 shows a large prefetch letting one worker hoard a backlog that a second worker then cannot share.
    taken_by = Counter(
        events.filter(kind=EventKind.RECEIVED).values_list("snapshot__queue__worker", flat=True).order_by()
    )
    taken_by.pop(None, None)
    return {
        "accepted": accepted,
        "completed": completed,
        "failed": by_status.get(OrderStatus.FAILED, 0),
        "dead_lettered": by_status.get(OrderStatus.DEAD_LETTERED, 0),
        "in_flight": accepted - terminal,
        "settled": accepted > 0 and terminal == accepted,
        "retrying": by_status.get(OrderStatus.RETRYING, 0),
        "retried": events.filter(kind=EventKind.RETRY_SCHEDULED).values("order_id").distinct().count(),
        "replayed": events.filter(kind=EventKind.REPLAYED).values("order_id").distinct().count(),
        # Delivered again (a worker died or gave the message back before its ack): the failure really happened.
        "redelivered": events.filter(kind=EventKind.REDELIVERED).values("order_id").distinct().count(),
        "parked_by_limit": orders.filter(
            status=OrderStatus.DEAD_LETTERED, failure_reason__startswith="delivery limit"
        ).count(),
        # Lost: lost now (message nowhere) or lost earlier and re-sent by the sweeper; counted once each.
        "lost": len(nowhere | resent),
        "lost_resent": len(resent),
        # Stuck orders a live worker does not hold, while the queues cannot say whether they hold their messages.
        "lost_undecided": lost.stuck - lost.held if lost.lost is None else 0,
        "lost_why": lost.why,
        "charges": checkpoints.gateway_charges(orders),
        "charged_twice": checkpoints.charged_twice(orders),
        "requests": requests,
        "duplicates": flaky.count() - requests,
        "workers_used": len(taken_by),
        "most_by_one_worker": max(taken_by.values(), default=0),
        "workers_running": WorkerHeartbeat.objects.filter(last_seen__gte=timezone.now() - WORKER_ALIVE).count(),
        "seconds": round(seconds, 1),
        "throughput": round(completed / seconds, 1) if seconds > 0 else None,
        # The phase's orders, for the page's reads (the cache lesson), and its dead-lettered ones, for a replay.
        "ids": [str(pk) for pk in orders.order_by("created_at").values_list("pk", flat=True)[:100]],
        "replayable_ids": [
            str(pk)
            for pk in orders.filter(status=OrderStatus.DEAD_LETTERED)
            .order_by("created_at")
            .values_list("pk", flat=True)[:200]
        ],
    }


def counters(names: tuple[str, ...]) -> dict[str, int | None]:
    """Counts Redis keeps for the whole sandbox since the cache was last flushed (a lesson's "Zero the counters"
    flushes it): stale reads and ghost messages (orders/checkpoints.py), and the API's cache hits and misses. None when
    Redis does not answer. They are not per phase: a lesson zeroes them before each phase it measures them in."""
    if not names:
        return {}
    stats = cache.stats()
    if stats.get("available") is False:
        return dict.fromkeys(names)
    known = {
        "cache_hits": lambda: stats.get("hits", 0),
        "cache_misses": lambda: stats.get("misses", 0),
        "stale_reads": checkpoints.stale_reads,
        "ghost_messages": checkpoints.ghost_messages,
    }
    return {name: known[name]() for name in names}
