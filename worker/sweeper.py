"""Reconciliation: the relay re-sends, through the outbox, orders whose message is nowhere to be found (a purged or
deleted queue, a broker restored from an old disk). What counts as "nowhere", and why a re-send is harmless:
docs/10-design-notes.md, "The sweeper".
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.utils import timezone

from orders.events import record_event
from orders.models import EventKind, Order, OrderEvent, OrderStatus, OutboxMessage
from orders.services import order_message, outbox_channel
from worker.models import WorkerHeartbeat
from worker.topology import topology

log = logging.getLogger(__name__)

SWEPT_STATUSES = (OrderStatus.QUEUED, OrderStatus.PROCESSING, OrderStatus.RETRYING)
# Workers write their heartbeat every second; one silent for this long no longer holds anything we can count on.
LIVE_WORKER = timedelta(seconds=10)


def _stale(now: datetime, after: timedelta, retry_grace: timedelta) -> QuerySet[Order]:
    """Orders in flight whose journey has not moved for `after` (longer, when the last event sent it to a retry
    tier) and with no outbox row still to publish."""
    last_event = OrderEvent.objects.filter(order=OuterRef("pk")).order_by("-seq")
    return (
        Order.objects.filter(status__in=SWEPT_STATUSES)
        .annotate(last_at=Subquery(last_event.values("at")[:1]), last_kind=Subquery(last_event.values("kind")[:1]))
        .filter(last_at__lt=now - after)
        .exclude(last_kind=EventKind.RETRY_SCHEDULED, last_at__gte=now - after - retry_grace)
        .exclude(Exists(OutboxMessage.objects.filter(order=OuterRef("pk"), sent_at__isnull=True)))
    )


def _live_workers(now: datetime) -> QuerySet[WorkerHeartbeat]:
    """Workers that have reported recently. One silent for longer is dead (the broker has returned its deliveries
    to the queue) or cut off from the database (what it holds may be re-sent: harmless)."""
    return WorkerHeartbeat.objects.filter(last_seen__gte=now - LIVE_WORKER)


def _held_by_workers(now: datetime) -> set[str]:
    held: set[str] = set()
    for holding in _live_workers(now).values_list("holding", flat=True):
        held.update(str(order_id) for order_id in holding or [])
    return held


def workers_reported_since(moment: datetime) -> bool:
    """True when every live worker has written its heartbeat after `moment`. A message that left the main queue
    before `moment` is then either listed in its worker's heartbeat or already finished (a fresh event)."""
    now = timezone.now()
    return not _live_workers(now).filter(last_seen__lt=moment).exists()


def orders_resend_stale(*, after: timedelta, retry_grace: timedelta, limit: int = 500) -> list[uuid.UUID]:
    """Re-send through the outbox up to `limit` orders whose message is nowhere to be found (see the module
    docstring; the caller has seen the main queue empty and every live worker report since). Returns their ids."""
    now = timezone.now()
    held = _held_by_workers(now)
    candidates = [
        pk for pk in _stale(now, after, retry_grace).values_list("pk", flat=True)[:limit] if str(pk) not in held
    ]
    if not candidates:
        return []
    resent: list[uuid.UUID] = []
    seconds = f"{after.total_seconds():g}"
    with transaction.atomic():
        # SKIP LOCKED: an order another sweeper (or a worker's step) has locked is left to it this round.
        locked = list(
            Order.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk__in=candidates)
            .values_list("pk", flat=True)
        )
        # Checked again under the lock with a fresh snapshot (a new statement under READ COMMITTED): a sweeper
        # that re-sent one of these and committed meanwhile has added a `resent` event and an outbox row.
        for order in _stale(timezone.now(), after, retry_grace).filter(pk__in=locked):
            outbox = OutboxMessage.objects.create(order=order, payload=order_message(order))
            record_event(
                order,
                EventKind.RESENT,
                f"Re-sent: no message found after {seconds} s (not in a worker's hands, not in a queue); "
                f"outbox message #{outbox.id} carries it.",
                queue={"outbox_id": outbox.id, "note": "back in the outbox; the relay publishes it"},
            )
            resent.append(order.pk)
        if resent:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [outbox_channel(), "sweeper"])
    if resent:
        log.warning("sweeper: re-sent %d order(s) with no message found after %s s", len(resent), seconds)
    return resent


class Sweeper:
    """One round in two phases, so the queue count and the workers' lists agree: first the main queue is seen
    empty (at time T); then, once every live worker has reported after T (each lists what it took from the queue
    before T), orders that are stale and held by no one are re-sent. Reading both at once would miss a message a
    worker took a moment ago and has not listed yet."""

    def __init__(self, *, after: float | None = None, every: float | None = None) -> None:
        self.after = settings.SWEEP_AFTER if after is None else after
        self.every = settings.SWEEP_EVERY if every is None else every
        self.retry_grace = timedelta(
            milliseconds=max((lane.delay_ms for tier in topology().retry_tiers for lane in tier.lanes), default=0)
        )
        self.last_run = time.monotonic()  # the first round waits a full interval: workers report in first
        self.queue_empty_at: datetime | None = None
        self.resent = 0

    @property
    def enabled(self) -> bool:
        return self.after > 0

    def tick(self, count_ready: Callable[[], int]) -> list[uuid.UUID]:
        """Called by the relay on every loop: the second phase of a round under way, or a new round when due."""
        if self.queue_empty_at is not None:
            return self.sweep()
        if self.enabled and time.monotonic() - self.last_run >= self.every:
            self.observe(count_ready())
        return []

    def observe(self, main_queue_ready: int | None) -> None:
        """Phase one: the main queue's ready count, just read (None: unknown). Only an empty queue starts a round."""
        self.last_run = time.monotonic()
        self.queue_empty_at = timezone.now() if main_queue_ready == 0 else None

    def sweep(self) -> list[uuid.UUID]:
        """Phase two: re-send what is stale once every live worker has reported since the queue was seen empty
        (until then, try again on the next call; after `every` seconds, give up and start a new round)."""
        seen_empty = self.queue_empty_at
        if seen_empty is None:
            return []
        if not workers_reported_since(seen_empty):
            if time.monotonic() - self.last_run >= self.every:
                self.queue_empty_at = None
            return []
        self.queue_empty_at = None
        resent = orders_resend_stale(after=timedelta(seconds=self.after), retry_grace=self.retry_grace)
        self.resent += len(resent)
        return resent
