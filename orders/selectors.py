"""Reads of orders, their events and the catalog, each in a fixed, small number of queries."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from orders import cache, sandbox
from orders.models import CacheMode, Order, OrderEvent, Product
from orders.serializers import order_representation


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
    current = sandbox.modes(fresh=True)
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


# A hit counts as stale when the database row changed more than this long before the read. Write-through writes the
# cache right after each commit, so a read landing in that gap of milliseconds sees the previous status: that is the
# write's latency, not a stale cache, and on a busy machine the gap can stretch. Cache-aside keeps an old status for
# its whole TTL (minutes), which is what the count is for.
STALE_AFTER = timedelta(seconds=1)


def _count_if_stale(order_id: uuid.UUID | str, cached: dict[str, Any]) -> None:
    row = Order.objects.filter(pk=order_id).values_list("status", "version", "updated_at").first()
    if row is None:
        return
    status, version, updated_at = row
    if (cached.get("status"), cached.get("version")) != (status, version) and updated_at < timezone.now() - STALE_AFTER:
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
