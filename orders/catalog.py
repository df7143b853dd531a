"""The catalog as the accept path prices it: sku -> Product (id, sku, price), kept in each process between requests
and checked against a version token in Redis; never the stock (docs/10-design-notes.md, "The accept path's catalog
cache").
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

from django.core.cache import cache

from orders.models import Product

VERSION_KEY = "catalog:version"
# Seconds an entry is trusted without a new read, whatever the token says (the Redis-outage case above).
MAX_AGE = 60.0


def catalog_read_reference(skus: Collection[str]) -> dict[str, Product]:
    """The known products among `skus`, by sku, read from PostgreSQL now: what `catalog_read` must always agree
    with (orders/tests/test_catalog.py)."""
    return {p.sku: p for p in Product.objects.filter(sku__in=list(skus)).only("id", "sku", "price")}


@dataclass(frozen=True)
class _Entries:
    """What this process read under one token. Replaced whole, never changed in place, so the web server's threads
    can read it without a lock."""

    version: str | None = None
    read_at: float = 0.0
    products: dict[str, Product] = field(default_factory=dict)


_entries = _Entries()
_lock = threading.Lock()  # only around replacing `_entries`


def catalog_read(skus: Collection[str]) -> dict[str, Product]:
    """The known products among `skus`, by sku (id, sku and price loaded; unknown skus are absent), from this
    process's entries when the catalog has not changed since they were read, else from PostgreSQL."""
    global _entries
    version = _current_version()
    if version is None:  # Redis unreachable: nothing can tell us the entries are still right
        return catalog_read_reference(skus)
    entries = _entries
    if entries.version != version or time.monotonic() - entries.read_at > MAX_AGE:
        entries = _Entries(version=version, read_at=time.monotonic())
    missing = [sku for sku in skus if sku not in entries.products]
    if missing:
        # Unknown skus are not remembered: they are read again next time (a product created meanwhile is found).
        entries = _Entries(entries.version, entries.read_at, {**entries.products, **catalog_read_reference(missing)})
    if entries is not _entries:
        with _lock:
            _entries = entries
    return {sku: entries.products[sku] for sku in skus if sku in entries.products}


def _current_version() -> str | None:
    """The catalog's token in Redis; the first reader after a flush (or ever) sets one. None if Redis is down."""
    version = cache.get(VERSION_KEY)
    if version is not None:
        return version
    token = uuid.uuid4().hex
    added = cache.add(VERSION_KEY, token, timeout=None)
    if added is None:  # django-redis's answer when Redis did not answer (IGNORE_EXCEPTIONS)
        return None
    return token if added else cache.get(VERSION_KEY)  # ours, or the one a concurrent reader set first


def catalog_changed() -> None:
    """A product was saved or deleted (orders/signals.py, after the commit): every process reads the catalog again
    on its next request."""
    forget()
    cache.set(VERSION_KEY, uuid.uuid4().hex, timeout=None)


def forget() -> None:
    """Drop this process's entries (at a product change, before its commit; tests)."""
    global _entries
    with _lock:
        _entries = _Entries()
