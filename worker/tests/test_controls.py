"""The dashboard's control endpoints against the real PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.test import APIClient

from orders import cache, live
from orders.models import Order, OrderEvent, OutboxMessage
from worker.controls import burst_create
from worker.tests.processes import wait_until
from worker.topology import topology

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_user("ops", password="x", is_staff=True))
    client.get("/")  # sets the CSRF cookie, as the dashboard does
    return client


def post(client: APIClient, url: str, body: dict | None = None):
    return client.post(
        url,
        data=json.dumps(body or {}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def test_it_places_a_burst_in_the_background(staff, product):
    product.stock = 1000
    product.save()
    response = post(staff, "/api/controls/burst/", {"count": 250})
    assert response.status_code == 202
    assert response.json()["count"] == 250
    assert wait_until(lambda: Order.objects.count() == 250, 30)
    assert OutboxMessage.objects.count() == 250
    assert OrderEvent.objects.filter(kind="accepted").count() == 250
    assert wait_until(lambda: any("250 orders accepted" in c["detail"] for c in live.recent_controls()), 10)
    assert [c["action"] for c in live.recent_controls()][-2:] == ["burst", "burst"]


def test_burst_create_spreads_orders_over_the_products_in_stock(product):
    burst_create(count=3, by="test", burst_id="t")
    assert sorted(Order.objects.values_list("lines__sku", flat=True)) == [product.sku] * 3
    connection.close()


@pytest.mark.parametrize("count", [0, 10_001, "many"])
def test_it_refuses_a_burst_out_of_range(staff, count):
    assert post(staff, "/api/controls/burst/", {"count": count}).status_code == 400
    assert Order.objects.count() == 0


def test_it_purges_a_queue(staff, broker):
    for n in range(3):
        broker.publish(
            exchange=broker.topology.exchange,
            routing_key="order.placed",
            body={"n": n},
            message_id=str(n),
            message_type="order.placed",
        )
    response = post(staff, "/api/controls/purge-queue/", {"queue": broker.topology.process_queue})
    assert response.status_code == 200
    assert response.json() == {"queue": broker.topology.process_queue, "purged": 3}
    assert broker.channel.queue_declare(broker.topology.process_queue, passive=True).method.message_count == 0
    assert "3 message(s) dropped" in live.recent_controls()[-1]["detail"]


def test_it_purges_only_this_instances_queues(staff):
    response = post(staff, "/api/controls/purge-queue/", {"queue": "someone.elses.queue"})
    assert response.status_code == 400
    assert topology().process_queue in response.json()["queue"][0]


def test_it_flushes_the_cache(staff):
    cache.write_order({"id": "a", "version": 1})
    response = post(staff, "/api/controls/flush-cache/")
    assert response.status_code == 200
    assert response.json()["removed"] >= 1
    assert cache.read_order("a") is None


def test_controls_need_staff_and_csrf(product):
    anonymous = APIClient()
    assert anonymous.post("/api/controls/flush-cache/").status_code == 403
    viewer = APIClient()
    viewer.force_login(get_user_model().objects.create_user("viewer", password="x"))
    assert viewer.post("/api/controls/burst/", {"count": 1}, format="json").status_code == 403
    staff = APIClient(enforce_csrf_checks=True)
    staff.force_login(get_user_model().objects.create_user("staff", password="x", is_staff=True))
    assert staff.post("/api/controls/burst/", {"count": 1}, format="json").status_code == 403  # no CSRF token
    assert Order.objects.count() == 0


def test_controls_do_not_exist_outside_the_sandbox(staff, settings):
    settings.ORDERPIPE_SANDBOX = False
    for url in ["/api/controls/burst/", "/api/controls/purge-queue/", "/api/controls/flush-cache/"]:
        assert post(staff, url, {"count": 1}).status_code == 404
