"""Keep Redis in step with deletions and the catalog: a deleted order leaves the cache after the commit, a saved or
deleted product makes every process read the catalog again (docs/10-design-notes.md, "Deletions and the catalog").
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
