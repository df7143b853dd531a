"""Reads of orders, their events and the catalog, each in a fixed, small number of queries."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet

from orders import cache
from orders.models import Order, OrderEvent, Product
from orders.sandbox import policies
from orders.serializers import order_representation


def order_list(*, status: str | None = None) -> QuerySet[Order]:
    qs = Order.objects.prefetch_related("lines").order_by("-created_at", "-id")
    if status:
        qs = qs.filter(status=status)
    return qs


def order_read(order_id: uuid.UUID | str) -> tuple[dict[str, Any], bool]:
    """The order's representation, from Redis when present. Returns (representation, cache_hit).
    Raises Order.DoesNotExist.

    The cache policy reads and fills (orders/sandbox/policies.py): write-through, where the workers write after each
    commit and a miss fills the entry; the sandbox's cache_aside (only this read fills it, and nothing invalidates
    it: a long TTL serves old statuses) and off (PostgreSQL every time). In the sandbox only, a hit costs one more
    query, the row's status and version, to count a stale read when the cached copy differs (the lessons'
    checkpoint); production never makes it."""
    policy = policies.cache_policy(fresh=True)
    cached = policy.read(order_id)
    if cached is not None:
        return cached, True
    order = Order.objects.prefetch_related("lines").get(pk=order_id)
    representation = order_representation(order)
    policy.fill(representation)
    return representation, False


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
