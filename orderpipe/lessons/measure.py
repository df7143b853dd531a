"""What a lesson's checkpoint panel shows, measured from real state: the orders of one phase of a lesson run (found
by their customer email, `run_email`), PostgreSQL's rows, the gateway's ledger, the workers' heartbeats and the
queue depths the relay and workers last observed.

"Lost" is the honest count, so it has the most rules (`message_nowhere`). An order is lost when it was accepted, is
not in a terminal state, and its message is nowhere: no unsent outbox row (the relay would publish it), not held by
a live worker (each heartbeat lists the orders of the deliveries it holds unacked), not waiting out a retry tier,
and not in any queue. A queue's ready count cannot say whose messages it holds, so while the main queue or a retry
tier holds any message, or their depths were not observed in the last few seconds, nothing is called lost ("not
yet known"): the count is late, never wrong. An order must also have been quiet for a few seconds, so a delivery a
worker took a moment ago is in its heartbeat before we look. And an order the sweeper re-sent (`resent` event) was
lost too, whatever it became afterwards: it is counted, and shown as "lost, later re-sent by the sweeper".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, Max, Min, OuterRef, QuerySet, Subquery
from django.utils import timezone

from orders import cache
from orders.models import (
    EventKind,
    GatewayCharge,
    Order,
    OrderEvent,
    OrderStatus,
    OutboxMessage,
    QueueStat,
    WorkerHeartbeat,
)
from worker.sweeper import LIVE_WORKER

# Every order a lesson places goes to an address of this domain; `run_email` names the run and phase in it.
LESSON_DOMAIN = "lessons.example.com"
# An order whose journey moved more recently than this may be in a worker's hands that has not reported it yet.
QUIET = timedelta(seconds=5)
# Queue depths older than this are not trusted to say "empty".
FRESH_QUEUE_STATS = timedelta(seconds=5)
# The flaky client's orders carry `note="flaky <client run> request <n>"`: one logical request each.
FLAKY_NOTE_PREFIX = "flaky "


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


@dataclass(frozen=True)
class Whereabouts:
    """Where messages can be that PostgreSQL does not show: in live workers' hands, or waiting in a queue."""

    held: frozenset[str]
    waiting: int | None  # ready messages in the main queue and the retry tiers; None: not observed recently

    @classmethod
    def now(cls, at: datetime) -> Whereabouts:
        held: set[str] = set()
        for holding in WorkerHeartbeat.objects.filter(last_seen__gte=at - LIVE_WORKER).values_list(
            "holding", flat=True
        ):
            held.update(str(order_id) for order_id in holding or [])
        stats = list(QueueStat.objects.filter(role__in=("main", "retry")).values_list("ready", "observed_at"))
        fresh = bool(stats) and all(observed_at >= at - FRESH_QUEUE_STATS for _ready, observed_at in stats)
        return cls(held=frozenset(held), waiting=sum(ready for ready, _at in stats) if fresh else None)


def message_nowhere(orders: QuerySet[Order], *, at: datetime, where: Whereabouts) -> tuple[set[str], int]:
    """The ids of `orders` whose message is nowhere (see the module docstring), and how many others are in flight
    and undecided (their message may be waiting in a queue, or they moved too recently to tell)."""
    last_event = OrderEvent.objects.filter(order=OuterRef("pk")).order_by("-seq")
    in_flight = (
        orders.exclude(status__in=OrderStatus.terminal())
        .annotate(last_at=Subquery(last_event.values("at")[:1]), last_kind=Subquery(last_event.values("kind")[:1]))
        .annotate(unsent=Exists(OutboxMessage.objects.filter(order=OuterRef("pk"), sent_at__isnull=True)))
    )
    retry_grace = timedelta(milliseconds=max(settings.RETRY_DELAYS_MS, default=0)) + QUIET
    nowhere: set[str] = set()
    undecided = 0
    for pk, last_at, last_kind, unsent in in_flight.values_list("pk", "last_at", "last_kind", "unsent"):
        if unsent or str(pk) in where.held:
            continue  # the relay will publish it, or a live worker holds it: it has a message
        if last_kind == EventKind.RETRY_SCHEDULED and last_at >= at - retry_grace:
            continue  # waiting out a retry tier
        if where.waiting != 0 or last_at is None or last_at >= at - QUIET:
            undecided += 1
            continue
        nowhere.add(str(pk))
    return nowhere, undecided


def measure(email: str, *, at: datetime | None = None, where: Whereabouts | None = None) -> dict[str, Any]:
    """The numbers of one phase: every count a lesson may show (each lesson picks the ones it needs)."""
    at = at or timezone.now()
    where = where or Whereabouts.now(at)
    orders = Order.objects.filter(customer_email=email)
    by_status = dict(orders.order_by().values_list("status").annotate(n=Count("pk")))
    accepted = sum(by_status.values())
    ids = [str(pk) for pk in orders.values_list("pk", flat=True)]
    kinds_of = OrderEvent.objects.filter(order__in=orders)
    resent = set(str(pk) for pk in kinds_of.filter(kind=EventKind.RESENT).values_list("order_id", flat=True))
    nowhere, undecided = message_nowhere(orders, at=at, where=where)
    charges = GatewayCharge.objects.filter(order_ref__in=ids).values("order_ref").annotate(n=Count("pk")).order_by()
    flaky = orders.filter(note__startswith=FLAKY_NOTE_PREFIX)
    requests = flaky.values("note").distinct().count()
    span = orders.filter(status=OrderStatus.COMPLETED).aggregate(first=Min("created_at"), last=Max("completed_at"))
    completed = by_status.get(OrderStatus.COMPLETED, 0)
    seconds = (span["last"] - span["first"]).total_seconds() if completed > 1 and span["first"] else 0.0
    terminal = sum(by_status.get(status, 0) for status in OrderStatus.terminal())
    return {
        "accepted": accepted,
        "completed": completed,
        "failed": by_status.get(OrderStatus.FAILED, 0),
        "dead_lettered": by_status.get(OrderStatus.DEAD_LETTERED, 0),
        "in_flight": accepted - terminal,
        "settled": accepted > 0 and terminal == accepted,
        "retrying": by_status.get(OrderStatus.RETRYING, 0),
        "retried": kinds_of.filter(kind=EventKind.RETRY_SCHEDULED).values("order_id").distinct().count(),
        "replayed": kinds_of.filter(kind=EventKind.REPLAYED).values("order_id").distinct().count(),
        "parked_by_limit": orders.filter(
            status=OrderStatus.DEAD_LETTERED, failure_reason__startswith="delivery limit"
        ).count(),
        # Lost: lost now (message nowhere) or lost earlier and re-sent by the sweeper; counted once each.
        "lost": len(nowhere | resent),
        "lost_resent": len(resent),
        "lost_undecided": undecided,
        "charges": sum(row["n"] for row in charges),
        "charged_twice": sum(1 for row in charges if row["n"] > 1),
        "requests": requests,
        "duplicates": flaky.count() - requests,
        "seconds": round(seconds, 1),
        "throughput": round(completed / seconds, 1) if seconds > 0 else None,
        # The phase's orders, for the page's reads (the cache lesson).
        "ids": [str(pk) for pk in orders.order_by("created_at").values_list("pk", flat=True)[:100]],
        "replayable_ids": list(
            orders.filter(status=OrderStatus.DEAD_LETTERED).values_list("pk", flat=True).order_by("created_at")[:200]
        ),
    }


def counters(names: tuple[str, ...]) -> dict[str, int | None]:
    """Counts Redis keeps for the whole sandbox since the cache was last flushed (a lesson's "Zero the counters"
    flushes it): stale reads and ghost messages (orders/cache.py), and the API's cache hits and misses. None when
    Redis does not answer. They are not per phase: a lesson zeroes them before each phase it measures them in."""
    if not names:
        return {}
    stats = cache.stats()
    if stats.get("available") is False:
        return dict.fromkeys(names)
    values: dict[str, int | None] = {}
    for name in names:
        if name == "cache_hits":
            values[name] = stats.get("hits", 0)
        elif name == "cache_misses":
            values[name] = stats.get("misses", 0)
        else:
            values[name] = getattr(cache, name)()  # stale_reads(), ghost_messages()
    return values
