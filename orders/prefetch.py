"""Hand a model instance the related rows it would otherwise prefetch, without a query.

Django has no public API for it; the names below are the ones `prefetch_related` sets, used only here.
orders/tests/test_prefetch.py checks them on the installed Django against a real `prefetch_related`."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Model


def attach_prefetched(instance: Model, relation: str, rows: Sequence[Model]) -> None:
    """Make `getattr(instance, relation).all()` return `rows`, as `prefetch_related(relation)` would have."""
    queryset = getattr(instance, relation).all()
    queryset._result_cache = list(rows)
    queryset._prefetch_done = True
    instance.__dict__.setdefault("_prefetched_objects_cache", {})[relation] = queryset
