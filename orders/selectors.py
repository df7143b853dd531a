"""Reads of the pipeline's state, each gathered in a fixed, small number of queries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db.models import Count, QuerySet
from django.utils import timezone

from orders import cache, sandbox
from orders.models import (
    CacheMode,
    Order,
    OrderEvent,
    OrderStatus,
    OutboxMessage,
    Product,
    QueueStat,
    RelayHeartbeat,
    SupervisedProcess,
    WorkerHeartbeat,
)
from orders.serializers import order_representation

WORKER_STALE_AFTER = timedelta(seconds=15)
# A worker silent for longer than WORKER_STALE_AFTER is listed as gone (with when it stopped) for this long, then
# no longer shown: a crashed worker's row would otherwise stay on the page forever. (The rows stay in the table for
# the admin; a restarted worker has a new name, so nothing reuses them.)
WORKER_FORGET_AFTER = timedelta(minutes=5)


def order_list(*, status: str | None = None) -> QuerySet[Order]:
    qs = Order.objects.prefetch_related("lines").order_by("-created_at", "-id")
    if status:
        qs = qs.filter(status=status)
    return qs


def order_read(order_id: uuid.UUID | str) -> tuple[dict[str, Any], bool]:
    """The order's representation, from Redis when present. Returns (representation, cache_hit).
    Raises Order.DoesNotExist.

    The sandbox's cache_mode decides: write_through (the workers write after each commit; a miss fills the entry),
    cache_aside (only this read fills it, and nothing invalidates it: a long TTL serves old statuses), off (PostgreSQL
    every time). In the sandbox only, a hit costs one more query, the row's status and version, to count a stale
    read when the cached copy differs (the lessons' checkpoint); production never makes it."""
    current = sandbox.modes()
    if current.cache_mode != CacheMode.OFF:
        cached = cache.read_order(order_id)
        if cached is not None:
            if settings.ORDERPIPE_SANDBOX:
                _count_if_stale(order_id, cached)
            return cached, True
    order = Order.objects.prefetch_related("lines").get(pk=order_id)
    representation = order_representation(order)
    if current.cache_mode != CacheMode.OFF:
        cache.fill_order(representation, ttl=current.cache_ttl)
    return representation, False


def _count_if_stale(order_id: uuid.UUID | str, cached: dict[str, Any]) -> None:
    row = Order.objects.filter(pk=order_id).values_list("status", "version").first()
    if row is not None and (cached.get("status"), cached.get("version")) != row:
        cache.count_stale_read()


def order_page_read(order_id: uuid.UUID | str) -> Order:
    """The journey page's read of an order: PostgreSQL, never the cache. The page shows what the database holds
    beside what Redis holds, so it must not show the cache's copy as the database row. Counted as a page read,
    apart from the API's hits and misses, so the hit ratio stays the API's. Raises Order.DoesNotExist."""
    order = Order.objects.get(pk=order_id)
    cache.count_page_read()
    return order


def order_events(order_id: uuid.UUID | str) -> QuerySet[OrderEvent]:
    return OrderEvent.objects.filter(order_id=order_id).order_by("seq")


def product_list() -> QuerySet[Product]:
    return Product.objects.order_by("sku")


class QueueState(TypedDict):
    name: str
    role: str
    ready: int
    unacked: int
    consumers: int
    observed_at: str


class WorkerState(TypedDict):
    name: str
    hostname: str
    pid: int
    current_order: str | None
    processed: int
    unacked: int
    last_seen: str
    alive: bool


class GoneWorker(TypedDict):
    name: str
    hostname: str
    pid: int
    processed: int
    stopped_at: str


class RelayState(TypedDict):
    name: str
    pid: int
    alive: bool
    state: str  # idle, publishing, unreachable, sweeping (RelayHeartbeat.State)
    detail: str
    published: int
    rate: float  # rows per second over the last few seconds; 0 once the relay is gone
    last_publish_at: str | None
    last_seen: str


def relay_states(now: datetime) -> list[RelayState]:
    """The relays that reported within WORKER_FORGET_AFTER, running ones first. A relay silent for longer than
    WORKER_STALE_AFTER is not running (crashed, or its host is gone), like a worker."""
    rows = RelayHeartbeat.objects.filter(last_seen__gte=now - WORKER_FORGET_AFTER).order_by("-last_seen")
    relays: list[RelayState] = []
    for r in rows:
        alive = now - r.last_seen < WORKER_STALE_AFTER
        relays.append(
            {
                "name": r.name,
                "pid": r.pid,
                "alive": alive,
                "state": r.state,
                "detail": r.detail,
                "published": r.published,
                "rate": r.rate if alive else 0.0,
                "last_publish_at": r.last_publish_at.isoformat() if r.last_publish_at else None,
                "last_seen": r.last_seen.isoformat(),
            }
        )
    return sorted(relays, key=lambda r: not r["alive"])


def pipeline_state() -> dict[str, Any]:
    """Everything the dashboard shows about the pipeline, in nine queries and one Redis round trip or two."""
    now = timezone.now()
    by_status = {status.value: 0 for status in OrderStatus}
    for row in Order.objects.values("status").annotate(n=Count("id")).order_by():
        by_status[row["status"]] = row["n"]
    backlog = OutboxMessage.objects.filter(sent_at__isnull=True).count()
    heartbeats = list(WorkerHeartbeat.objects.filter(last_seen__gte=now - WORKER_FORGET_AFTER).order_by("name"))
    workers: list[WorkerState] = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "current_order": str(w.current_order) if w.current_order else None,
            "processed": w.processed,
            "unacked": w.unacked,
            "last_seen": w.last_seen.isoformat(),
            "alive": True,
        }
        for w in heartbeats
        if now - w.last_seen < WORKER_STALE_AFTER
    ]
    gone_workers: list[GoneWorker] = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "processed": w.processed,
            "stopped_at": w.last_seen.isoformat(),
        }
        for w in sorted(heartbeats, key=lambda w: w.last_seen, reverse=True)
        if now - w.last_seen >= WORKER_STALE_AFTER
    ]
    # Passive queue declarations count ready messages only; a worker reports the deliveries it holds unacked.
    unacked_main = sum(w["unacked"] for w in workers if w["alive"])
    queues: list[QueueState] = [
        {
            "name": q.name,
            "role": q.role,
            "ready": q.ready,
            "unacked": unacked_main if q.role == "main" else 0,
            "consumers": q.consumers,
            "observed_at": q.observed_at.isoformat(),
        }
        for q in QueueStat.objects.all()
    ]
    return {
        "at": now.isoformat(),
        "outbox": {"backlog": backlog},
        "orders": {"by_status": by_status, "total": sum(by_status.values())},
        "queues": queues,
        # The relay between the outbox and the exchange: running or not, its state and publish rate.
        "relays": relay_states(now),
        "cache": cache.stats(),
        "workers": workers,
        "gone_workers": gone_workers,
        "sandbox": sandbox.sandbox_state(),
        # Live on the page: bursts and restocks change it while the learner watches.
        "stock": [
            {"sku": sku, "stock": stock} for sku, stock in Product.objects.order_by("sku").values_list("sku", "stock")
        ],
        # Only under `make run`'s supervisor: what each process it keeps alive went through (crashed, restarted).
        "processes": [
            {
                "name": p.name,
                "role": p.role,
                "pid": p.pid,
                "state": p.state,
                "restarts": p.restarts,
                "last_exit": p.last_exit,
                "last_exit_at": p.last_exit_at.isoformat() if p.last_exit_at else None,
            }
            for p in SupervisedProcess.objects.order_by("name")
        ],
    }
