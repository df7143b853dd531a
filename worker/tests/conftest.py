from __future__ import annotations

import json

import pytest

from orders import services
from orders.models import Order, OutboxMessage
from worker.processing import Delivery


@pytest.fixture
def place_order(product):
    def place(quantity: int = 1, sku: str = "BOOK-001", email: str = "ada@example.com") -> Order:
        return services.order_create(customer_email=email, items=[{"sku": sku, "quantity": quantity}])

    return place


def delivery_for(order: Order, **extra) -> Delivery:
    outbox = OutboxMessage.objects.filter(order=order).latest("id")
    return Delivery(
        body=json.dumps(outbox.payload).encode(),
        delivery_tag=1,
        exchange="test.orders",
        routing_key="order.placed",
        queue="test.orders.process",
        message_id=str(outbox.id),
        **extra,
    )
