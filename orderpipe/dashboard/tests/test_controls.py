"""The dashboard's control endpoints against the real PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from orderpipe.dashboard.controls import NotEnoughStock, burst_create, burst_plan
from orders import cache, live
from orders.models import Order, OrderEvent, OutboxMessage, Product
from orders.tests.factories import ProductFactory, StaffFactory, UserFactory
from worker.tests.processes import wait_until
from worker.topology import topology

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(StaffFactory(username="ops"))
    client.get("/")  # sets the CSRF cookie, as the dashboard does
    return client


def post(client: APIClient, url: str, body: dict | None = None):
    return client.post(
        url,
        data=json.dumps(body or {}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )


def test_a_burst_answers_once_its_orders_exist(staff, product):
    product.stock = 1000
    product.save()
    response = post(staff, "/api/controls/burst/", {"count": 250})
    assert response.status_code == 202
    assert (response.json()["count"], response.json()["created"]) == (250, 250)
    assert Order.objects.count() == 250
    assert OutboxMessage.objects.count() == 250
    assert OrderEvent.objects.filter(kind="accepted").count() == 250
    assert wait_until(lambda: any("250 orders accepted" in c["detail"] for c in live.recent_controls()), 10)
    assert [c["action"] for c in live.recent_controls()][-2:] == ["burst", "burst"]


def test_burst_create_spreads_orders_over_the_products_in_stock(product):
    burst_create(count=3, by="test", burst_id="t")
    assert sorted(Order.objects.values_list("lines__sku", flat=True)) == [product.sku] * 3
    connection.close()


def test_a_burst_spreads_over_the_stock_so_no_product_runs_out():
    ProductFactory(sku="BIG", stock=100)
    ProductFactory(sku="SMALL", stock=5)
    ProductFactory(sku="NONE", stock=0)
    plan = burst_plan(count=100)
    # The 100 orders leave 5 items of the 105: no product is asked for more than it holds.
    assert plan.count("BIG") <= 100 and plan.count("SMALL") <= 5 and "NONE" not in plan
    assert len(plan) == 100
    with pytest.raises(NotEnoughStock, match="105 item"):
        burst_plan(count=106)


def test_a_burst_larger_than_the_stock_is_refused_before_anything_is_created(staff, product):
    Product.objects.update(stock=3)
    response = post(staff, "/api/controls/burst/", {"count": 4})
    assert response.status_code == 409
    assert "Not enough stock" in response.json()["detail"] and "at most 3" in response.json()["detail"]
    assert Order.objects.count() == 0


def test_staff_restock_one_product_or_all_and_it_is_recorded(staff):
    ProductFactory(sku="A-1", stock=1)
    ProductFactory(sku="B-2", stock=0)
    response = post(staff, "/api/controls/restock/", {"sku": "B-2", "quantity": 10})
    assert response.status_code == 200
    assert response.json() == {"restocked": [{"sku": "B-2", "stock": 10}]}
    response = post(staff, "/api/controls/restock/")
    assert dict(Product.objects.values_list("sku", "stock")) == {"A-1": 501, "B-2": 510}
    assert live.recent_controls()[-1]["detail"] == "+500 to every product"
    assert post(staff, "/api/controls/restock/", {"sku": "NOPE"}).json() == {"sku": ["No product NOPE."]}
    assert post(staff, "/api/controls/restock/", {"quantity": 0}).status_code == 400
    assert dict(Product.objects.values_list("sku", "stock")) == {"A-1": 501, "B-2": 510}


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
    assert response.json() == {
        "queue": broker.topology.process_queue,
        "purged": 3,
        "note": f"The sweeper re-sends their orders after {settings.SWEEP_AFTER:g} s without progress.",
    }
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
    viewer.force_login(UserFactory(username="viewer"))
    assert viewer.post("/api/controls/burst/", {"count": 1}, format="json").status_code == 403
    staff = APIClient(enforce_csrf_checks=True)
    staff.force_login(StaffFactory(username="staff"))
    assert staff.post("/api/controls/burst/", {"count": 1}, format="json").status_code == 403  # no CSRF token
    assert viewer.post("/api/controls/restock/", {}, format="json").status_code == 403
    assert anonymous.post("/api/controls/restock/", {}, format="json").status_code == 403
    assert Order.objects.count() == 0


def test_controls_do_not_exist_outside_the_sandbox(staff, settings):
    settings.ORDERPIPE_SANDBOX = False
    for url in [
        "/api/controls/burst/",
        "/api/controls/purge-queue/",
        "/api/controls/flush-cache/",
        "/api/controls/restock/",
        "/api/controls/kill/",
        "/api/controls/outage/",
        "/api/controls/node/",
        "/api/controls/poison/",
    ]:
        assert post(staff, url, {"count": 1}).status_code == 404
