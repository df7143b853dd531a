"""What the domain can count for a lesson's checkpoint, from real state (PostgreSQL and Redis): plain functions
the lesson pages call. The broker's side of "lost" (no message in any queue, none held by a live worker) needs the
queue depths and the workers' heartbeats, and is in worker/checkpoints.py, which builds on `stuck_orders` here.

Each takes an optional `orders` queryset to count within (a lesson's own orders); None counts every order.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Count, Exists, Max, OuterRef, QuerySet
from django.utils import timezone

from orders import cache
from orders.models import GatewayCharge, Order, OrderStatus, OutboxMessage

# How long an order must have shown no journey movement before it counts as stuck.
STUCK_AFTER = timedelta(seconds=5)


def _scope(orders: QuerySet[Order] | None) -> QuerySet[Order]:
    return Order.objects.all() if orders is None else orders


def charged_twice(orders: QuerySet[Order] | None = None) -> int:
    """Orders the payment gateway charged more than once: more than one row in the gateway's own ledger
    (GatewayCharge, matched by the merchant reference it keeps, the order id). Our Payment table cannot show it:
    its one-payment constraint keeps the first charge even when the step ran again (step_guards=off)."""
    refs = [str(pk) for pk in _scope(orders).values_list("pk", flat=True)] if orders is not None else None
    ledger = GatewayCharge.objects.all() if refs is None else GatewayCharge.objects.filter(order_ref__in=refs)
    return ledger.values("order_ref").annotate(n=Count("id")).filter(n__gt=1).count()


def gateway_charges(orders: QuerySet[Order] | None = None) -> int:
    """Charges in the gateway's ledger (for the orders given): one per order when nothing went wrong."""
    if orders is None:
        return GatewayCharge.objects.count()
    refs = [str(pk) for pk in orders.values_list("pk", flat=True)]
    return GatewayCharge.objects.filter(order_ref__in=refs).count()


def stale_reads() -> int:
    """Cache hits of GET /api/orders/<id>/ that served a status or version other than the database row's, where the
    row had changed more than a second before the read (orders/sandbox/policies.py `STALE_AFTER`), since the cache
    was last flushed. Counted in the sandbox only (the cache policy there: one more query per hit)."""
    return cache.stale_reads()


def ghost_messages() -> int:
    """Messages for orders that do not exist (publish_mode=publish_first whose commit failed), as the workers met
    them: each was dead-lettered as an unknown order. Counted in Redis since the cache was last flushed."""
    return cache.ghost_messages()


def stuck_orders(orders: QuerySet[Order] | None = None, *, quiet_for: timedelta = STUCK_AFTER) -> list[uuid.UUID]:
    """The domain's half of "lost": orders that are not terminal, have no outbox row waiting to be published (so
    the relay will not send them), and whose journey has not moved for `quiet_for` (so no worker is working on
    them). Such an order is lost only if no message for it exists anywhere either (in a queue, or held unacked or
    in memory by a live worker): worker/checkpoints.py `lost_orders` checks that part."""
    pending_outbox = OutboxMessage.objects.filter(order=OuterRef("pk"), sent_at__isnull=True)
    cutoff = timezone.now() - quiet_for
    return list(
        _scope(orders)
        .exclude(status__in=OrderStatus.terminal())
        .annotate(last_event=Max("events__at"), owed=Exists(pending_outbox))
        .filter(owed=False, last_event__lt=cutoff)
        .values_list("pk", flat=True)
    )
