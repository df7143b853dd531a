"""The private Django names orders/prefetch.py sets exist and behave on the installed Django, as a real
`prefetch_related` leaves them; an upgrade that changes them fails here."""

from __future__ import annotations

import pytest

from orders.models import Order, OrderLine
from orders.prefetch import attach_prefetched
from orders.services import order_create


@pytest.mark.django_db
def test_attached_rows_are_what_prefetch_related_leaves(product, django_assert_num_queries):
    created = order_create(customer_email="a@example.com", items=[{"sku": product.sku, "quantity": 2}])
    prefetched = Order.objects.prefetch_related("lines").get(pk=created.pk)
    real = prefetched.lines.all()
    # The names the adapter sets are the ones Django's own prefetch sets.
    assert prefetched._prefetched_objects_cache["lines"] is real
    assert real._prefetch_done is True and real._result_cache == list(OrderLine.objects.filter(order=created))

    order = Order.objects.get(pk=created.pk)
    lines = list(OrderLine.objects.filter(order=order))
    attach_prefetched(order, "lines", lines)
    with django_assert_num_queries(0):
        assert list(order.lines.all()) == lines
        assert order.lines.all().count() == len(lines) and order.lines.all().exists()
        assert [line.quantity for line in order.lines.all()] == [2]
