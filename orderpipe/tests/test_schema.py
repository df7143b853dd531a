"""The OpenAPI schema says what the API does (orders/schema.py): every status each operation can answer, the
Idempotency-Key's length, only the logins in force, and no sandbox endpoints while the sandbox is off."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db

STAFF_ONLY = [
    ("/api/orders/", "get"),
    ("/api/orders/{order_id}/", "get"),
    ("/api/orders/{order_id}/events/", "get"),
    ("/api/orders/{order_id}/next-step/", "post"),
    ("/api/pipeline/", "get"),
    ("/api/sandbox/", "get"),
    ("/api/sandbox/", "patch"),
    ("/api/controls/burst/", "post"),
    ("/api/controls/purge-queue/", "post"),
    ("/api/controls/restock/", "post"),
    ("/api/controls/flush-cache/", "post"),
    ("/api/controls/node/", "post"),
    ("/api/controls/poison/", "post"),
    ("/api/dead-letters/replay/", "post"),
]
WITH_A_BODY = [
    "/api/controls/node/",
    "/api/controls/poison/",
    "/api/controls/purge-queue/",
    "/api/controls/restock/",
    "/api/dead-letters/replay/",
    "/api/orders/",
]


def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def test_every_operation_documents_what_it_can_answer():
    paths = schema()["paths"]
    for path, method in STAFF_ONLY:
        responses = paths[path][method]["responses"]
        assert {"403", "429", "503"} <= set(responses), (path, method, sorted(responses))
        assert {"cookieAuth": []} in paths[path][method]["security"]
        assert {} not in paths[path][method]["security"], (path, method)  # not for anonymous callers
    for path in WITH_A_BODY:
        assert {"400", "411", "413", "415"} <= set(paths[path]["post"]["responses"]), path
    assert "422" in paths["/api/orders/"]["post"]["responses"]
    assert "404" in paths["/api/orders/{order_id}/"]["get"]["responses"]
    # Anonymous callers may place orders and read the catalog: the schema says so.
    assert {} in paths["/api/orders/"]["post"]["security"]
    assert {} in paths["/api/products/"]["get"]["security"]


def test_the_idempotency_key_length_and_the_order_limits_are_in_the_schema(settings):
    document = schema()
    (key,) = [p for p in document["paths"]["/api/orders/"]["post"]["parameters"] if p["name"] == "Idempotency-Key"]
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    order = document["components"]["schemas"]["OrderInputRequest"]["properties"]
    assert (order["items"]["minItems"], order["items"]["maxItems"]) == (1, 50)
    item = document["components"]["schemas"]["OrderItemInputRequest"]["properties"]
    assert item["quantity"]["maximum"] == settings.ORDER_MAX_LINE_QUANTITY


def test_only_the_session_login_is_advertised_outside_debug():
    assert set(schema()["components"]["securitySchemes"]) == {"cookieAuth"}


def test_with_the_sandbox_off_its_endpoints_leave_the_schema_and_the_api_root(settings, staff_api):
    settings.ORDERPIPE_SANDBOX = False
    paths = set(schema()["paths"])
    assert paths == {
        "/api/",
        "/api/orders/",
        "/api/orders/{order_id}/",
        "/api/orders/{order_id}/events/",
        "/api/pipeline/",
        "/api/products/",
    }
    root = staff_api.get("/api/").json()
    assert set(root) == {"orders", "products", "pipeline", "schema", "docs"}
    settings.ORDERPIPE_SANDBOX = True
    assert "sandbox" in staff_api.get("/api/").json()


def test_an_empty_status_filter_is_refused(staff_api):
    response = staff_api.get("/api/orders/?status=")
    assert response.status_code == 400
    assert "status" in response.json()
