"""The whole pipeline with real processes: API -> PostgreSQL + outbox -> relay -> RabbitMQ -> worker -> Redis."""

from __future__ import annotations

import json

import pytest

from orders.models import Order, OrderEvent, OrderStatus, Payment, Product
from orders.tests.factories import ProductFactory
from worker.tests.processes import Service, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXPECTED_JOURNEY = [
    "accepted",
    "published",
    "received",
    "inventory_reserved",
    "payment_charged",
    "customer_notified",
    "completed",
]


def all_terminal(ids) -> bool:
    return Order.objects.filter(pk__in=ids, status__in=list(OrderStatus.terminal())).count() == len(ids)


def test_orders_travel_the_whole_pipeline(api, broker, tmp_path):
    book = ProductFactory(sku="BOOK-001", price="25.00", stock=100)
    rare = ProductFactory(sku="RARE-006", price="99.00", stock=1)
    relay = Service("run_relay", log_dir=tmp_path).start()
    worker = Service("run_worker", "--prefetch", "5", log_dir=tmp_path).start()
    try:
        ids = []
        for i in range(10):
            response = api.post(
                "/api/orders/",
                data=json.dumps(
                    {"customer_email": f"e2e{i}@example.com", "items": [{"sku": "BOOK-001", "quantity": 2}]}
                ),
                content_type="application/json",
            )
            assert response.status_code == 202
            ids.append(response.json()["id"])
        too_many = api.post(
            "/api/orders/",
            data=json.dumps({"customer_email": "late@example.com", "items": [{"sku": "RARE-006", "quantity": 2}]}),
            content_type="application/json",
        ).json()["id"]
        assert wait_until(lambda: all_terminal([*ids, too_many]), 60), relay.output() + worker.output()
    finally:
        relay_code, worker_code = relay.stop(), worker.stop()
    assert (relay_code, worker_code) == (0, 0), relay.output() + worker.output()

    assert Order.objects.filter(pk__in=ids, status="completed").count() == 10
    assert Payment.objects.filter(order_id__in=ids).count() == 10
    assert Product.objects.get(pk=book.pk).stock == 100 - 10 * 2

    failed = Order.objects.get(pk=too_many)
    assert failed.status == "failed"
    assert "out of stock" in failed.failure_reason
    assert Product.objects.get(pk=rare.pk).stock == 1
    assert not Payment.objects.filter(order=failed).exists()

    for order_id in ids:
        first = api.get(f"/api/orders/{order_id}/")
        assert first["X-Cache"] == "HIT"  # the worker wrote it through after the last commit
        assert first.json()["status"] == "completed"
        assert api.get(f"/api/orders/{order_id}/")["X-Cache"] == "HIT"
        events = list(OrderEvent.objects.filter(order_id=order_id).order_by("seq"))
        assert [e.kind for e in events] == EXPECTED_JOURNEY
        assert [e.seq for e in events] == list(range(1, len(EXPECTED_JOURNEY) + 1))
        for event in events:
            assert set(event.snapshot) == {"db", "queue", "cache"}
        assert events[-1].snapshot["db"]["status"] == "completed"
        assert events[2].snapshot["queue"]["queue"].endswith(".orders.process")
        assert events[-1].snapshot["cache"]["value"]["status"] == "completed"
