"""Keep Redis in step with deletions and the catalog. An order deleted from PostgreSQL (the admin's delete page, its
bulk "delete selected" action, or any queryset delete, all of which send post_delete per row) is evicted from the
cache, so `GET /api/orders/<id>/` stops serving it from Redis at once instead of for the rest of ORDER_CACHE_TTL.

The eviction runs after the commit: evicting inside the transaction would let a read in between (which still sees
the row) put the entry straight back, and a rolled-back delete would have emptied the cache for nothing.

A product saved or deleted (the admin, `seed_demo`) makes every process read the catalog again (orders/catalog.py):
this process's copy is dropped at once, and the version token in Redis is replaced after the commit, for the
others. Stock updates (`QuerySet.update`, the worker's reserve step) send no signal: stock is not in that copy.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from orders import cache, catalog
from orders.models import Order, Product


@receiver(post_delete, sender=Order, dispatch_uid="orders.evict_deleted_order")
def evict_deleted_order(sender: type[Order], instance: Order, using: str, **kwargs: Any) -> None:
    order_id = instance.pk
    transaction.on_commit(lambda: cache.evict_order(order_id), using=using)


@receiver(post_save, sender=Product, dispatch_uid="orders.catalog_saved")
@receiver(post_delete, sender=Product, dispatch_uid="orders.catalog_deleted")
def catalog_changed(sender: type[Product], instance: Product, using: str, **kwargs: Any) -> None:
    catalog.forget()
    transaction.on_commit(catalog.catalog_changed, using=using, robust=True)
