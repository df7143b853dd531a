"""The permission model (the table in docs/05-security.md), checked for every URL of the URLconf: a URL pattern
missing from TABLE fails `test_every_url_has_a_permission_decision`, so no endpoint ships without one."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from orders import services
from orders.tests.factories import ProductFactory, StaffFactory, UserFactory

CLIENTS = ("anonymous", "customer", "staff")


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # "{order}" stands for an existing order's id
    production: tuple[int, int, int]  # status for anonymous, customer (logged in, not staff), staff
    debug: tuple[int, int, int]
    body: dict | None = None


def same(status: tuple[int, int, int]) -> dict[str, tuple[int, int, int]]:
    return {"production": status, "debug": status}


OPEN = (200, 200, 200)
STAFF = (403, 403, 200)
ORDER_BODY = {"customer_email": "perm@example.com", "items": [{"sku": "PERM-001", "quantity": 1}]}

# URL pattern -> the requests that show its decision. Statuses past the permission check (400, 409) prove the
# request was let in without changing anything.
TABLE: dict[str, list[Case]] = {
    "admin/": [Case("GET", "/admin/", **same((302, 302, 200)))],
    "api/": [Case("GET", "/api/", **same(OPEN))],
    "api/orders/": [
        Case("GET", "/api/orders/", production=STAFF, debug=OPEN),
        Case("POST", "/api/orders/", body=ORDER_BODY, **same((202, 202, 202))),
    ],
    "api/orders/<str:order_id>/": [Case("GET", "/api/orders/{order}/", production=STAFF, debug=OPEN)],
    "api/orders/<str:order_id>/events/": [Case("GET", "/api/orders/{order}/events/", production=STAFF, debug=OPEN)],
    "api/orders/<str:order_id>/next-step/": [Case("POST", "/api/orders/{order}/next-step/", **same((403, 403, 202)))],
    "api/products/": [Case("GET", "/api/products/", **same(OPEN))],
    "api/pipeline/": [Case("GET", "/api/pipeline/", production=STAFF, debug=OPEN)],
    "api/sandbox/": [Case("GET", "/api/sandbox/", **same(STAFF))],
    "api/controls/burst/": [Case("POST", "/api/controls/burst/", body={"count": 0}, **same((403, 403, 400)))],
    "api/controls/purge-queue/": [
        Case("POST", "/api/controls/purge-queue/", body={"queue": "nope"}, **same((403, 403, 400)))
    ],
    "api/controls/flush-cache/": [Case("POST", "/api/controls/flush-cache/", **same(STAFF))],
    "api/controls/kill/": [Case("POST", "/api/controls/kill/", body={"signal": "SIGHUP"}, **same((403, 403, 400)))],
    "api/controls/outage/": [Case("POST", "/api/controls/outage/", body={"service": "mysql"}, **same((403, 403, 400)))],
    "api/controls/node/": [Case("POST", "/api/controls/node/", body={"action": "nuke"}, **same((403, 403, 400)))],
    "api/controls/poison/": [Case("POST", "/api/controls/poison/", body={"kind": "nope"}, **same((403, 403, 400)))],
    "api/controls/restock/": [Case("POST", "/api/controls/restock/", body={"quantity": 0}, **same((403, 403, 400)))],
    "api/dead-letters/replay/": [
        Case("POST", "/api/dead-letters/replay/", body={"order_id": "{order}"}, **same((403, 403, 409)))
    ],
    "api/schema/": [Case("GET", "/api/schema/", production=STAFF, debug=OPEN)],
    "api/docs/": [Case("GET", "/api/docs/", production=STAFF, debug=OPEN)],
    "api-auth/login/": [Case("GET", "/api-auth/login/", **same(OPEN))],
    "api-auth/logout/": [Case("POST", "/api-auth/logout/", **same(OPEN))],
    "healthz": [Case("GET", "/healthz", **same(OPEN))],
    "readyz": [Case("GET", "/readyz", **same(OPEN))],
    "metrics": [Case("GET", "/metrics", production=STAFF, debug=OPEN)],
    "": [Case("GET", "/", production=(302, 302, 200), debug=OPEN)],
    "orders/<uuid:order_id>/": [Case("GET", "/orders/{order}/", production=(302, 302, 200), debug=OPEN)],
    "lessons/": [Case("GET", "/lessons/", production=(302, 302, 200), debug=OPEN)],
    "lessons/instructor/": [Case("GET", "/lessons/instructor/", **same((302, 302, 200)))],
    "lessons/instructor/reset/": [Case("POST", "/lessons/instructor/reset/", **same(STAFF))],
    "lessons/<slug:slug>/": [Case("GET", "/lessons/retries/", production=(302, 302, 200), debug=OPEN)],
    "lessons/<slug:slug>/state/": [Case("GET", "/lessons/retries/state/", production=STAFF, debug=OPEN)],
    "lessons/<slug:slug>/reset/": [Case("POST", "/lessons/retries/reset/", **same(STAFF))],
    "lessons/<slug:slug>/start/": [Case("POST", "/lessons/retries/start/", **same(STAFF))],
    "lessons/<slug:slug>/act/": [
        Case("POST", "/lessons/retries/act/", body={"step": 0, "action": 0}, **same((403, 403, 400)))
    ],
    "lessons/<slug:slug>/phase/": [
        Case("POST", "/lessons/retries/phase/", body={"phase": "nope"}, **same((403, 403, 400)))
    ],
}


def url_patterns(patterns=None, prefix: str = ""):
    """Every route of the URLconf as written (`api/orders/<str:order_id>/`). The admin's own URLs count as one:
    Django decides those (staff only) for all of them."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                yield route
            else:
                yield from url_patterns(pattern.url_patterns, route)
        else:
            assert isinstance(pattern, URLPattern)
            yield route


@pytest.mark.pure
def test_every_url_has_a_permission_decision():
    routes = set(url_patterns())
    assert routes - set(TABLE) == set(), "URLs without a decision in TABLE (and docs/05-security.md)"
    assert set(TABLE) - routes == set(), "TABLE names URLs that no longer exist"


@pytest.fixture
def clients(db) -> dict[str, APIClient]:
    customer, staff = APIClient(), APIClient()
    customer.force_login(UserFactory(username="customer"))
    staff.force_login(StaffFactory(username="staff"))
    return {"anonymous": APIClient(), "customer": customer, "staff": staff}


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["production", "debug"])
@pytest.mark.parametrize("route", list(TABLE))
def test_each_client_gets_what_the_table_says(route, mode, clients, settings):
    settings.DEBUG = mode == "debug"
    settings.ORDERPIPE_SANDBOX = True
    ProductFactory(sku="PERM-001", stock=100)
    order = services.order_create(customer_email="perm@example.com", items=[{"sku": "PERM-001", "quantity": 1}])
    for case in TABLE[route]:
        path = case.path.format(order=order.pk)
        body = json.loads(json.dumps(case.body).replace("{order}", str(order.pk))) if case.body else None
        got = {}
        for name in CLIENTS:
            client = clients[name]
            if case.method == "GET":
                response = client.get(path)
            else:
                response = client.post(path, data=json.dumps(body or {}), content_type="application/json")
            got[name] = response.status_code
        expected = dict(zip(CLIENTS, getattr(case, mode), strict=True))
        assert got == expected, f"{case.method} {path} ({mode})"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/sandbox/"),
        ("POST", "/api/orders/{order}/next-step/"),
        ("POST", "/api/controls/flush-cache/"),
        ("POST", "/api/dead-letters/replay/"),
        ("GET", "/lessons/retries/state/"),
        ("POST", "/lessons/retries/reset/"),
        ("POST", "/lessons/retries/start/"),
        ("POST", "/lessons/retries/phase/"),
        ("POST", "/lessons/instructor/reset/"),
    ],
)
def test_without_the_sandbox_every_control_and_replay_is_a_404(method, path, clients, settings):
    settings.ORDERPIPE_SANDBOX = False
    ProductFactory(sku="PERM-001", stock=100)
    order = services.order_create(customer_email="perm@example.com", items=[{"sku": "PERM-001", "quantity": 1}])
    response = getattr(clients["staff"], method.lower())(path.format(order=order.pk))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
