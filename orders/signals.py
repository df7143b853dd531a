"""Keep Redis in step with deletions: an order deleted from PostgreSQL (the admin's delete page, its bulk "delete
selected" action, or any queryset delete, all of which send post_delete per row) is evicted from the cache, so
`GET /api/orders/<id>/` stops serving it from Redis at once instead of for the rest of ORDER_CACHE_TTL.

The eviction runs after the commit: evicting inside the transaction would let a read in between (which still sees
the row) put the entry straight back, and a rolled-back delete would have emptied the cache for nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from orders import cache
from orders.models import Order


@receiver(post_delete, sender=Order, dispatch_uid="orders.evict_deleted_order")
def evict_deleted_order(sender: type[Order], instance: Order, using: str, **kwargs: Any) -> None:
    order_id = instance.pk
    transaction.on_commit(lambda: cache.evict_order(order_id), using=using)
