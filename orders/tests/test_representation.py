"""The hand-built order representation (API bodies, Redis values) is exactly what OrderSerializer renders."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.utils import timezone

from orders import reference, services
from orders.models import Order, OrderStatus, OrderStep
from orders.serializers import OrderSerializer, order_representation
from orders.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def serialized(order: Order) -> dict:
    return json.loads(json.dumps(OrderSerializer(order).data))


def test_it_matches_the_serializer_for_a_new_order_as_created_and_as_read(product):
    ProductFactory(sku="MUG-002", price="9.50", stock=5)
    order = services.order_create(
        customer_email="ada@example.com",
        items=[{"sku": "BOOK-001", "quantity": 3}, {"sku": "MUG-002", "quantity": 1}],
        note="gift",
    )
    fresh = reference.load_order(order.pk)
    assert order_representation(order) == serialized(fresh)
    assert order_representation(fresh) == serialized(fresh)
    assert json.loads(json.dumps(order_representation(order))) == order_representation(order)


@pytest.mark.parametrize("status", [OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.PROCESSING])
def test_it_matches_the_serializer_in_later_states(product, status):
    order = services.order_create(customer_email="bo@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    Order.objects.filter(pk=order.pk).update(
        status=status,
        step=OrderStep.CUSTOMER_NOTIFIED,
        attempts=2,
        version=7,
        total=Decimal("25.5"),
        failure_reason="declined" if status == OrderStatus.FAILED else "",
        result={"payment_reference": "sim_1", "charged": "25.00"},
        completed_at=timezone.now(),
    )
    fresh = reference.load_order(order.pk)
    assert order_representation(fresh) == serialized(fresh)
    assert (order_representation(fresh)["result"] is None) == (status != OrderStatus.COMPLETED)
