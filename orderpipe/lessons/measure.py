"""What a lesson's checkpoint panel shows, measured from real state for one phase of a lesson run (its orders found by
their customer email, `run_email`). Every accepted order is in exactly one of BUCKETS: lost, not yet known, completed,
failed, dead-lettered or in flight (docs/10-design-notes.md, "The lessons' checkpoint figures").
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from orders import cache, checkpoints
from orders.models import EventKind, Order, OrderEvent, OrderLine, OrderStatus, OutboxMessage, Product
from worker.checkpoints import lost_orders
from worker.models import WorkerHeartbeat
from worker.queue_policy import DROPPED

# Every order a lesson places goes to an address of this domain; `run_email` names the run and phase in it.
LESSON_DOMAIN = "lessons.example.com"
# The flaky client's orders carry `note="flaky <client run> request <n>"`: one logical request each.
FLAKY_NOTE_PREFIX = "flaky "
# A worker that reported within this long is running (its heartbeat comes about once a second).
WORKER_ALIVE = timedelta(seconds=5)
# The oversold-stock lesson's product: one per run and phase (`lesson_sku`), LESSON_STOCK units at the start of its
# burst. Bursts placed from the dashboard leave these products alone (orderpipe/dashboard/controls.py).
LESSON_SKU_PREFIX = "lesson-"
LESSON_STOCK = 10
# The buckets every accepted order is counted in, exactly one each.
BUCKETS = ("completed", "failed", "dead_lettered", "in_flight", "not_yet_known", "lost")
# The retry-storm lesson counts the gateway's calls in bins of this long, and charts at most CHART_BINS of them.
CALL_BIN_MS = 100
CHART_BINS = 600
SECOND_BINS = 1000 // CALL_BIN_MS


def run_email(slug: str, run: str, phase: str) -> str:
    """The customer email of every order one phase of one lesson run places: `retries-3f9a1c-flaky@lessons…`."""
    return f"{slug}-{run}-{phase}@{LESSON_DOMAIN}"


def lesson_sku(slug: str, run: str, phase: str) -> str:
    return f"{LESSON_SKU_PREFIX}{slug}-{run}-{phase}"[:64]


def _stock(orders: QuerySet[Order], events: QuerySet[OrderEvent]) -> dict[str, Any]:
    """The oversold-stock lesson's numbers, from PostgreSQL: the units of the phase's lesson product that its orders
    hold reserved (a reservation event, and not failed since, which gives stock back), how many of those are beyond
    the stock the product started with, and the stock the product's row says is left."""
    lines = OrderLine.objects.filter(order__in=orders, sku__startswith=LESSON_SKU_PREFIX)
    product = Product.objects.filter(pk__in=lines.values("product_id")).first()
    if product is None:
        return {"stock_at_start": None, "units_sold": None, "oversold": None, "stock_left": None}
    reserved = events.filter(kind=EventKind.INVENTORY_RESERVED).values("order_id")
    sold = (
        lines.filter(order__in=reserved).exclude(order__status=OrderStatus.FAILED).aggregate(n=Sum("quantity"))["n"]
        or 0
    )
    return {
        "stock_at_start": LESSON_STOCK,
        "units_sold": sold,
        "oversold": max(0, sold - LESSON_STOCK),
        "stock_left": product.stock,
    }


def _backlog(orders: QuerySet[Order]) -> dict[str, Any]:
    """The full-queue lesson's numbers: where each order's message waited before a worker took it. Published at the
    first attempt: it waited in the queue; refused by the broker (nacked) at least once: it waited as an outbox row
    (or waits there still); each refused attempt is one nack the relay got. Dropped: the full queue dropped its
    message (dead-lettered with reason maxlen)."""
    rows = OutboxMessage.objects.filter(order__in=orders)
    counts = rows.aggregate(
        attempts=Sum("publish_attempts"),
        sent=Count("pk", filter=Q(sent_at__isnull=False)),
        in_outbox=Count("pk", filter=Q(sent_at__isnull=True)),
        at_once=Count("pk", filter=Q(sent_at__isnull=False, publish_attempts=1)),
        refused=Count("pk", filter=Q(publish_attempts__gt=1) | Q(sent_at__isnull=True, publish_attempts__gt=0)),
    )
    return {
        "in_outbox": counts["in_outbox"],
        "waited_in_queue": counts["at_once"],
        "waited_in_outbox": counts["refused"],
        "publish_nacks": (counts["attempts"] or 0) - counts["sent"],
        "dropped": orders.filter(status=OrderStatus.DEAD_LETTERED, failure_reason=DROPPED).count(),
    }


def _calls(events: QuerySet[OrderEvent]) -> dict[str, Any]:
    """The retry-storm lesson's numbers: every call the workers made to the payment gateway for the phase's orders, as
    the journey records its answer: a charge (payment_charged), or a refusal or timeout (the retry scheduled, or the
    dead letter, after 'charge payment'). Counted per CALL_BIN_MS from the first call: the peak of all calls, of the
    retried ones (each order's calls after its first: what the backoff shapes) and their busiest second, and of all
    calls once the gateway was back (from its first charge on); and the chart's bins (charged, refused)."""
    calls = list(
        events.filter(
            Q(kind=EventKind.PAYMENT_CHARGED)
            | Q(kind__in=(EventKind.RETRY_SCHEDULED, EventKind.DEAD_LETTERED), message__contains="'charge payment'")
        )
        .order_by("at", "pk")
        .values_list("order_id", "kind", "at")
    )
    if not calls:
        return {
            "gateway_calls": 0,
            "gateway_refused": 0,
            "calls_peak": 0,
            "retry_calls_peak": 0,
            "retry_calls_second": 0,
            "back_calls_peak": 0,
            "calls_chart": None,
        }
    start = calls[0][2]
    charged: Counter[int] = Counter()
    refused: Counter[int] = Counter()
    retried: Counter[int] = Counter()
    seen: set[Any] = set()
    for order_id, kind, at in calls:
        slot = int((at - start).total_seconds() * 1000 // CALL_BIN_MS)
        (charged if kind == EventKind.PAYMENT_CHARGED else refused)[slot] += 1
        retried[slot] += order_id in seen
        seen.add(order_id)
    total = charged + refused
    back = min(charged, default=None)
    bins = min(max(total) + 1, CHART_BINS)
    return {
        "gateway_calls": len(calls),
        "gateway_refused": sum(refused.values()),
        "calls_peak": max(total.values()),
        "retry_calls_peak": max(retried.values()),
        # The busiest second of retries (any ten bins in a row): less at the mercy of one bin's chance clump.
        "retry_calls_second": max(sum(retried[slot + n] for n in range(SECOND_BINS)) for slot in list(retried)),
        "back_calls_peak": max((n for slot, n in total.items() if back is not None and slot >= back), default=0),
        "calls_chart": {
            "bin_ms": CALL_BIN_MS,
            "charged": [charged[slot] for slot in range(bins)],
            "refused": [refused[slot] for slot in range(bins)],
        },
    }


def run_orders(slug: str, runs: list[str], phases: list[str]) -> QuerySet[Order]:
    """Every order of these runs of a lesson, whatever the phase (what a reset deletes): the exact addresses of the
    runs, never a mere domain, so an order someone typed an address of the domain into is left alone."""
    return Order.objects.filter(customer_email__in=[run_email(slug, run, phase) for run in runs for phase in phases])


def _buckets(orders: QuerySet[Order], events: QuerySet[OrderEvent]) -> dict[str, Any]:
    """Each order in exactly one of BUCKETS (docs/10-design-notes.md, "The lessons' checkpoint figures", says which),
    with what explains the lost ones."""
    status_of = {str(pk): status for pk, status in orders.values_list("pk", "status")}
    resent = {str(pk) for pk in events.filter(kind=EventKind.RESENT).values_list("order_id", flat=True)}
    found = lost_orders(orders)
    lost = resent | {str(pk) for pk in found.order_ids}
    unknown = {str(pk) for pk in found.candidate_ids} - lost if found.lost is None else set()
    terminal_buckets: dict[str, str] = {
        OrderStatus.COMPLETED: "completed",
        OrderStatus.FAILED: "failed",
        OrderStatus.DEAD_LETTERED: "dead_lettered",
    }
    counts = dict.fromkeys(BUCKETS, 0)
    for pk, status in status_of.items():
        if pk in lost:
            counts["lost"] += 1
        elif pk in unknown:
            counts["not_yet_known"] += 1
        else:
            counts[terminal_buckets.get(status, "in_flight")] += 1
    return {
        **counts,
        "lost_resent": len(resent & status_of.keys()),
        "lost_why": found.why if counts["not_yet_known"] else "",
    }


def measure(email: str | None, *, placed_before: datetime | None = None) -> dict[str, Any]:
    """The numbers of one phase: the buckets, and every other count a lesson may show (each lesson picks the ones
    it needs). None: a phase of a lesson not started yet (all zero). `placed_before`: only the orders placed by
    then (a frozen phase's)."""
    orders = Order.objects.filter(customer_email=email) if email else Order.objects.none()
    if placed_before is not None:
        orders = orders.filter(created_at__lte=placed_before)
    by_status = dict(orders.order_by().values_list("status").annotate(n=Count("pk")))
    accepted = sum(by_status.values())
    events = OrderEvent.objects.filter(order__in=orders)
    buckets = _buckets(orders, events)
    flaky = orders.filter(note__startswith=FLAKY_NOTE_PREFIX)
    requests = flaky.values("note").distinct().count()
    span = orders.filter(status=OrderStatus.COMPLETED).aggregate(first=Min("created_at"), last=Max("completed_at"))
    completed = by_status.get(OrderStatus.COMPLETED, 0)
    seconds = (span["last"] - span["first"]).total_seconds() if completed > 1 and span["first"] else 0.0
    # Which worker took each order's first delivery (the worker's name is in the received event's queue snapshot):
    # lesson 8 shows a large prefetch letting one worker hoard a backlog that a second worker then cannot share.
    taken_by = Counter(
        events.filter(kind=EventKind.RECEIVED).values_list("snapshot__queue__worker", flat=True).order_by()
    )
    taken_by.pop(None, None)
    held: set[str] = set()
    for holding in WorkerHeartbeat.objects.filter(last_seen__gte=timezone.now() - WORKER_ALIVE).values_list(
        "holding", flat=True
    ):
        held.update(holding or [])
    return {
        "accepted": accepted,
        **buckets,
        # Every order in a bucket it will stay in (only a lost order re-sent by the sweeper may still complete).
        "settled": accepted > 0 and buckets["in_flight"] == 0 and buckets["not_yet_known"] == 0,
        # Held by a live worker now (what a kill takes with it, or returns to the queue).
        "held": len(held & {str(pk) for pk in orders.values_list("pk", flat=True)}),
        "retrying": by_status.get(OrderStatus.RETRYING, 0),
        "retried": events.filter(kind=EventKind.RETRY_SCHEDULED).values("order_id").distinct().count(),
        "replayed": events.filter(kind=EventKind.REPLAYED).values("order_id").distinct().count(),
        # Delivered again (a worker died or gave the message back before its ack): the failure really happened.
        "redelivered": events.filter(kind=EventKind.REDELIVERED).values("order_id").distinct().count(),
        "parked_by_limit": orders.filter(
            status=OrderStatus.DEAD_LETTERED, failure_reason__startswith="delivery limit"
        ).count(),
        "charges": checkpoints.gateway_charges(orders),
        "charged_twice": checkpoints.charged_twice(orders),
        "requests": requests,
        "duplicates": flaky.count() - requests,
        "workers_used": len(taken_by),
        "most_by_one_worker": max(taken_by.values(), default=0),
        "workers_running": WorkerHeartbeat.objects.filter(last_seen__gte=timezone.now() - WORKER_ALIVE).count(),
        **_stock(orders, events),
        **_backlog(orders),
        **_calls(events),
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
    Redis does not answer. They belong to the phase under way; a lesson keeps each earlier phase's as they were when
    the next one began (orderpipe/lessons/services.py `phase_begin`)."""
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
