"""The dashboard's live feed: channel-layer group names, the messages pushed to them, and the reads behind them.

The control actions the feed shows are recorded by orders/live.py (the domain records them too); which orders a
journey page watches is kept here, in Redis.

Every channel-layer group name lives in this module. The message shapes (TypedDicts below) are what
`static/js/dashboard.js` and `static/js/journey.js` consume.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypedDict, cast

from django.db.models import Count
from django.db.models.functions import Trunc
from django.utils import timezone
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from orders import cache
from orders.models import EventKind, Order, OrderEvent

log = logging.getLogger(__name__)

PIPELINE_GROUP = "pipeline"
# The sockets' URL patterns (dashboard/routing.py); dashboard/pages.py hands them to the page scripts.
PIPELINE_SOCKET_PATH = "ws/pipeline/"
JOURNEY_SOCKET_PATH = "ws/orders/<str:order_id>/"
# How long a journey page's interest in its order lasts without a refresh (the consumer refreshes it).
WATCH_TTL_SECONDS = 90
# Events in the dashboard's feed: the snapshot sends this many, and the page keeps this many (static/js/dashboard.js).
FEED_LENGTH = 40
LATEST_ORDERS = 12
# The throughput chart's window: the snapshot's per-second rates cover it, and the chart draws it.
RATE_WINDOW_SECONDS = 180


def order_group(order_id: object) -> str:
    """The group of the sockets that show one order's journey."""
    return f"order.{order_id}"


# ---------------------------------------------------------------- message shapes


class FeedEvent(TypedDict):
    id: int
    order_id: str
    seq: int
    kind: str
    at: str
    message: str
    status: str


class LatestOrder(TypedDict):
    id: str
    status: str
    customer_email: str
    total: str
    created_at: str


class JourneyEvent(TypedDict):
    id: int
    seq: int
    kind: str
    label: str
    at: str
    message: str
    snapshot: dict[str, Any]


KIND_LABELS = dict(EventKind.choices)


def feed_event(row: Mapping[str, Any]) -> FeedEvent:
    return {
        "id": row["id"],
        "order_id": str(row["order_id"]),
        "seq": row["seq"],
        "kind": row["kind"],
        "at": row["at"].isoformat(),
        "message": row["message"],
        "status": row.get("status") or "",
    }


def journey_event(event: OrderEvent) -> JourneyEvent:
    return {
        "id": event.id,
        "seq": event.seq,
        "kind": event.kind,
        "label": KIND_LABELS.get(event.kind, event.kind),
        "at": event.at.isoformat(),
        "message": event.message,
        "snapshot": event.snapshot,
    }


# ---------------------------------------------------------------- reads (each one query)


def events_after(last_id: int, *, limit: int) -> list[dict[str, Any]]:
    """New events in id order, without their (large) snapshots: one query."""
    rows = (
        OrderEvent.objects.filter(id__gt=last_id)
        .order_by("id")
        .values("id", "order_id", "seq", "kind", "at", "message", status=_db_status())[:limit]
    )
    return cast(list[dict[str, Any]], list(rows))


def _db_status():
    from django.db.models.fields.json import KT

    return KT("snapshot__db__status")


def latest_event_id() -> int:
    last = OrderEvent.objects.order_by("-id").values_list("id", flat=True).first()
    return last or 0


def recent_feed(limit: int = FEED_LENGTH) -> list[FeedEvent]:
    rows = (
        OrderEvent.objects.order_by("-id").values("id", "order_id", "seq", "kind", "at", "message", status=_db_status())
    )[:limit]
    return [feed_event(row) for row in reversed(list(rows))]


def latest_orders(limit: int = LATEST_ORDERS) -> list[LatestOrder]:
    rows = Order.objects.order_by("-created_at", "-id").values("id", "status", "customer_email", "total", "created_at")
    return [
        {
            "id": str(row["id"]),
            "status": row["status"],
            "customer_email": row["customer_email"],
            "total": str(row["total"]),
            "created_at": row["created_at"].isoformat(),
        }
        for row in rows[:limit]
    ]


def recent_rates(seconds: int = RATE_WINDOW_SECONDS) -> list[list[int]]:
    """Accepted and completed orders per second over the last `seconds`: [[epoch_second, accepted, completed]]."""
    since = timezone.now() - timedelta(seconds=seconds)
    rows = (
        OrderEvent.objects.filter(at__gte=since, kind__in=[EventKind.ACCEPTED, EventKind.COMPLETED])
        .annotate(second=Trunc("at", "second"))
        .values("second", "kind")
        .annotate(n=Count("id"))
        .order_by()
    )
    buckets: dict[int, list[int]] = {}
    for row in rows:
        bucket = buckets.setdefault(int(row["second"].timestamp()), [0, 0])
        bucket[0 if row["kind"] == EventKind.ACCEPTED else 1] += row["n"]
    return [[second, *counts] for second, counts in sorted(buckets.items())]


def rates_of(rows: list[dict[str, Any]]) -> list[list[int]]:
    """The same per-second counts, for a batch of new events already read."""
    buckets: dict[int, list[int]] = {}
    for row in rows:
        if row["kind"] in (EventKind.ACCEPTED, EventKind.COMPLETED):
            bucket = buckets.setdefault(int(row["at"].timestamp()), [0, 0])
            bucket[0 if row["kind"] == EventKind.ACCEPTED else 1] += 1
    return [[second, *counts] for second, counts in sorted(buckets.items())]


def journey_events(order_id: uuid.UUID | str, *, after_id: int = 0, up_to_id: int | None = None) -> list[JourneyEvent]:
    qs = OrderEvent.objects.filter(order_id=order_id, id__gt=after_id).order_by("seq")
    if up_to_id is not None:
        qs = qs.filter(id__lte=up_to_id)
    return [journey_event(event) for event in qs]


def journey_events_for(order_ids: set[str], *, after_id: int, up_to_id: int) -> dict[str, list[JourneyEvent]]:
    """Full events (with snapshots) of several watched orders in one query."""
    grouped: dict[str, list[JourneyEvent]] = {}
    qs = OrderEvent.objects.filter(order_id__in=order_ids, id__gt=after_id, id__lte=up_to_id).order_by("order", "seq")
    for event in qs:
        grouped.setdefault(str(event.order_id), []).append(journey_event(event))
    return grouped


# ---------------------------------------------------------------- Redis: watched orders


def _redis():
    return get_redis_connection("default")


def watch_order(order_id: object) -> None:
    """Note that a journey page shows this order, so the producer sends it the order's events."""
    try:
        _redis().zadd(cache.live_watched_key(), {str(order_id): time.time() + WATCH_TTL_SECONDS})
    except RedisError as exc:
        log.warning("could not register watched order: %s", exc)


def watched_orders() -> set[str]:
    key = cache.live_watched_key()
    now = time.time()
    client = _redis()
    pipe = client.pipeline()
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zrange(key, 0, -1)
    _, members = pipe.execute()
    return {member.decode() for member in members}


def new_token() -> str:
    return uuid.uuid4().hex
