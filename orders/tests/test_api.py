from __future__ import annotations

import json

import pytest

from orders.models import Order, OrderEvent, OrderLine, OutboxMessage
from orders.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db

URL = "/api/orders/"


@pytest.fixture
def api(staff_api):
    """Reads need staff outside DEBUG; who may call what (anonymous, customer, staff) is orderpipe/tests/
    test_permissions.py's subject, not this module's."""
    return staff_api


def post(api, payload, **extra):
    return api.post(URL, data=json.dumps(payload), content_type="application/json", **extra)


def nothing_written() -> bool:
    return not (Order.objects.exists() or OutboxMessage.objects.exists() or OrderLine.objects.exists())


def test_it_accepts_an_order_with_202_location_and_catalog_prices(api, product):
    mug = ProductFactory(sku="MUG-002", price="9.50", stock=5)
    response = post(
        api,
        {
            "customer_email": "ada@example.com",
            "items": [{"sku": "BOOK-001", "quantity": 2}, {"sku": "MUG-002", "quantity": 1}],
            "note": "gift wrap",
        },
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert response["Location"].endswith(f"/api/orders/{body['id']}/")
    assert body["status"] == "pending"
    assert body["total"] == "59.50"
    assert body["items"] == [
        {"sku": "BOOK-001", "quantity": 2, "unit_price": "25.00", "line_total": "50.00"},
        {"sku": "MUG-002", "quantity": 1, "unit_price": "9.50", "line_total": "9.50"},
    ]
    order = Order.objects.get(pk=body["id"])
    assert order.note == "gift wrap"
    outbox = OutboxMessage.objects.get(order=order)
    assert outbox.sent_at is None
    assert outbox.payload["order_id"] == body["id"]
    assert outbox.payload["version"] == 1
    event = OrderEvent.objects.get(order=order)
    assert (event.seq, event.kind) == (1, "accepted")
    assert set(event.snapshot) == {"db", "queue", "cache"}
    # Accepting does not touch stock: that is the worker's first step.
    product.refresh_from_db()
    mug.refresh_from_db()
    assert (product.stock, mug.stock) == (10, 5)


def test_client_prices_are_ignored(api, product):
    response = post(
        api,
        {
            "customer_email": "a@example.com",
            "items": [{"sku": "BOOK-001", "quantity": 1, "unit_price": "0.01"}],
        },
    )
    assert response.status_code == 202
    assert response.json()["total"] == "25.00"


def _items(n):
    return [{"sku": f"SKU-{i:03d}", "quantity": 1} for i in range(n)]


@pytest.mark.parametrize(
    ("payload", "field", "fragment"),
    [
        (
            {"customer_email": "a@example.com", "items": [{"sku": "NOPE", "quantity": 1}]},
            "items",
            "Unknown sku",
        ),
        (
            {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 0}]},
            "items",
            "greater",
        ),
        (
            {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 101}]},
            "items",
            "less",
        ),
        (
            {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": "two"}]},
            "items",
            "integer",
        ),
        (
            {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1.5}]},
            "items",
            "integer",
        ),
        ({"customer_email": "a@example.com", "items": []}, "items", "empty"),
        ({"customer_email": "a@example.com"}, "items", "required"),
        ({"customer_email": "a@example.com", "items": _items(51)}, "items", "50"),
        (
            {"customer_email": "not-an-email", "items": [{"sku": "BOOK-001", "quantity": 1}]},
            "customer_email",
            "valid",
        ),
        ({"items": [{"sku": "BOOK-001", "quantity": 1}]}, "customer_email", "required"),
        (
            {
                "customer_email": "a@example.com",
                "items": [{"sku": "BOOK-001", "quantity": 1}],
                "note": "x" * 501,
            },
            "note",
            "500",
        ),
        (
            {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}] * 2},
            "items",
            "once",
        ),
        ({"customer_email": "a@example.com", "items": "BOOK-001"}, "items", "list"),
    ],
)
def test_bad_input_is_a_400_with_field_errors_and_writes_nothing(api, product, payload, field, fragment):
    response = post(api, payload)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors
    assert fragment.lower() in json.dumps(errors[field]).lower()
    assert nothing_written()
    product.refresh_from_db()
    assert product.stock == 10


def test_one_anonymous_order_cannot_take_a_products_whole_stock(product, settings):
    """A line holds at most ORDER_MAX_LINE_QUANTITY units, an order ORDER_MAX_QUANTITY in all, a sku once."""
    from rest_framework.test import APIClient

    anonymous = APIClient()
    skus = [f"SKU-{n}" for n in range(5)]
    for sku in skus:
        ProductFactory(sku=sku, stock=100)
    line, total = settings.ORDER_MAX_LINE_QUANTITY, settings.ORDER_MAX_QUANTITY
    refused = [
        ([{"sku": "SKU-0", "quantity": line + 1}], "less than or equal to"),
        ([{"sku": sku, "quantity": line} for sku in skus], f"at most {total} units in all"),
        ([{"sku": "SKU-0", "quantity": line}, {"sku": "SKU-0", "quantity": line}], "Each sku may appear once"),
    ]
    for items, message in refused:
        response = post(anonymous, {"customer_email": "a@example.com", "items": items})
        assert response.status_code == 400, response.content
        assert message in json.dumps(response.json()["items"]), response.json()
    assert nothing_written()
    accepted = [{"sku": sku, "quantity": line} for sku in skus[: total // line]]
    assert post(anonymous, {"customer_email": "a@example.com", "items": accepted}).status_code == 202


def test_malformed_json_is_a_400(api, product):
    response = api.post(URL, data='{"customer_email": ', content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert nothing_written()


def test_a_json_array_body_is_a_400(api, product):
    response = api.post(URL, data="[]", content_type="application/json")
    assert response.status_code == 400
    assert nothing_written()


def test_non_json_content_type_is_a_415(api, product):
    response = api.post(URL, data="customer_email=a@example.com", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "detail" in response.json()
    assert nothing_written()


@pytest.mark.parametrize("order_id", ["not-a-uuid", "12345", "0b7c6f2e-3c1d-4e9a-8f00-5a1b2c3d4e5f"])
def test_unknown_or_malformed_id_is_a_404_json(api, order_id):
    for path in (f"{URL}{order_id}/", f"{URL}{order_id}/events/"):
        response = api.get(path, HTTP_ACCEPT="application/json")
        assert response.status_code == 404
        assert response.json() == {"detail": "No order with this id.", "code": "not_found"}


def test_it_reads_an_order_from_postgres_then_from_redis(api, product):
    order_id = post(api, {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}).json()[
        "id"
    ]
    first = api.get(f"{URL}{order_id}/")
    second = api.get(f"{URL}{order_id}/")
    assert (first.status_code, first["X-Cache"]) == (200, "MISS")
    assert (second.status_code, second["X-Cache"]) == (200, "HIT")
    assert first.json() == second.json()
    assert first.json()["status"] == "pending"


def test_list_is_paginated_newest_first_and_filters_by_status(api, product):
    ids = [
        post(api, {"customer_email": f"c{i}@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}).json()["id"]
        for i in range(3)
    ]
    Order.objects.filter(pk=ids[0]).update(status="completed")
    response = api.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [o["id"] for o in body["results"]] == list(reversed(ids))
    completed = api.get(URL, {"status": "completed"}).json()
    assert [o["id"] for o in completed["results"]] == [ids[0]]
    assert api.get(URL, {"status": "bogus"}).status_code == 400


def test_events_endpoint_returns_the_journey(api, product):
    order_id = post(api, {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}).json()[
        "id"
    ]
    events = api.get(f"{URL}{order_id}/events/").json()
    assert [(e["seq"], e["kind"]) for e in events] == [(1, "accepted")]
    assert set(events[0]) == {"seq", "kind", "at", "message", "snapshot"}
    assert events[0]["snapshot"]["db"]["status"] == "pending"
    assert events[0]["snapshot"]["queue"]["outbox_id"] > 0
    assert events[0]["snapshot"]["cache"]["present"] is False


def test_products_lists_the_catalog(api, product):
    assert api.get("/api/products/").json() == [
        {"sku": "BOOK-001", "name": product.name, "price": "25.00", "stock": 10}
    ]


def test_pipeline_reports_backlog_statuses_and_cache(api, product):
    post(api, {"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]})
    state = api.get("/api/pipeline/").json()
    assert state["outbox"]["backlog"] == 1
    assert state["orders"]["by_status"]["pending"] == 1
    assert state["orders"]["total"] == 1
    assert state["cache"]["available"] is True
    assert set(state) >= {"queues", "workers", "cache", "orders", "outbox"}


def test_schema_and_docs_are_served_without_a_cdn(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/orders/" in schema.json()["paths"]
    docs = api.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower()


def test_the_browsable_api_renders_html(api, product):
    response = api.get(URL, HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert b"Order List Create" in response.content or b"<form" in response.content
