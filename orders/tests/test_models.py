from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from orders.models import TRANSITIONS, OrderStatus, Payment, Product, allowed_sources
from orders.tests.factories import OrderFactory, PaymentFactory, ProductFactory


@pytest.mark.pure
def test_terminal_statuses_have_no_way_out_except_replay():
    assert TRANSITIONS[OrderStatus.COMPLETED] == frozenset()
    assert TRANSITIONS[OrderStatus.FAILED] == frozenset()
    assert TRANSITIONS[OrderStatus.DEAD_LETTERED] == frozenset({OrderStatus.QUEUED})


@pytest.mark.pure
def test_allowed_sources_reads_the_table():
    assert set(allowed_sources(OrderStatus.COMPLETED)) == {"processing"}
    assert set(allowed_sources(OrderStatus.QUEUED)) == {"pending", "dead_lettered"}


@pytest.mark.pure
def test_every_status_has_an_entry():
    assert set(TRANSITIONS) == set(OrderStatus)


@pytest.mark.django_db
def test_the_database_refuses_a_second_payment_for_an_order():
    order = OrderFactory(total=Decimal("5.00"))
    PaymentFactory(order=order)
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentFactory(order=order)  # another gateway reference, the same order
    assert Payment.objects.filter(order=order).count() == 1


@pytest.mark.django_db
def test_the_database_refuses_negative_stock():
    product = ProductFactory(stock=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        Product.objects.filter(pk=product.pk).update(stock=-1)
