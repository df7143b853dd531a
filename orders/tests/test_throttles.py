"""Limits: DRF throttles (anonymous, per user, and the stricter one for placing orders) answer 429 JSON with
Retry-After; Basic auth is ignored outside DEBUG; the login forms lock a username (as the form normalizes it) per
address, and an address whatever the usernames, after failures."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.test import Client
from rest_framework.exceptions import Throttled
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from orders.api import OrderListCreateApi
from orders.tests.factories import StaffFactory, UserFactory
from orders.throttles import PipelinedThrottles

pytestmark = pytest.mark.django_db

ORDER = {"customer_email": "t@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}


@pytest.fixture
def rates(settings):
    """The test run's rates are generous (orderpipe/testing.py); these tests set small ones."""

    def set_rates(**rates: str | None) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"anon": None, "user": None, "orders": None, **rates},
        }

    return set_rates


def place(client, **extra):
    return client.post("/api/orders/", data=json.dumps(ORDER), content_type="application/json", **extra)


def test_placing_orders_is_throttled_with_a_429_json_and_retry_after(api, product, rates):
    rates(orders="2/minute")
    assert [place(api).status_code for _ in range(2)] == [202, 202]
    refused = place(api)
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    assert "throttled" in refused.json()["detail"].lower()
    assert refused.json()["code"] == "throttled"
    assert 0 < int(refused["Retry-After"]) <= 60
    # The stricter scope is for placing orders only: reads are still served.
    assert api.get("/api/products/").status_code == 200


def test_a_forged_x_forwarded_for_does_not_escape_the_throttle(api, product, rates):
    rates(orders="1/minute")
    assert place(api, HTTP_X_FORWARDED_FOR="10.0.0.1").status_code == 202
    assert place(api, HTTP_X_FORWARDED_FOR="10.0.0.2").status_code == 429


def test_anonymous_and_user_rates_apply_to_every_endpoint(product, rates):
    rates(anon="2/minute", user="3/minute")
    anonymous = APIClient()
    assert [anonymous.get("/api/products/").status_code for _ in range(3)] == [200, 200, 429]
    user = APIClient()
    user.force_login(UserFactory(username="customer"))
    assert [user.get("/api/products/").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_basic_header_is_not_checked_outside_debug(api, product):
    StaffFactory(username="ops", password="right")
    attempts = []
    user_login_failed.connect(receiver := lambda **kwargs: attempts.append(kwargs))
    try:
        wrong = "Basic " + base64.b64encode(b"ops:wrong").decode()
        right = "Basic " + base64.b64encode(b"ops:right").decode()
        # Not a 401 and not a password hash: the header is ignored, the request is anonymous.
        assert place(api, HTTP_AUTHORIZATION=wrong).status_code == 202
        assert attempts == []
        assert api.get("/api/pipeline/", HTTP_AUTHORIZATION=right).status_code == 403
    finally:
        user_login_failed.disconnect(receiver)


def test_basic_auth_still_works_in_debug(api, settings):
    settings.DEBUG = True
    StaffFactory(username="ops", password="right")
    right = "Basic " + base64.b64encode(b"ops:right").decode()
    assert api.get("/api/sandbox/", HTTP_AUTHORIZATION=right).status_code == 200


@pytest.mark.parametrize("path", ["/admin/login/", "/api-auth/login/"])
def test_logins_lock_a_username_per_address_after_failures(path, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    StaffFactory(username="ops", password="right")
    client = Client()
    for _ in range(3):
        assert client.post(path, {"username": "ops", "password": "wrong"}).status_code == 200  # the form again
    locked = client.post(path, {"username": "ops", "password": "right"})
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == settings.LOGIN_FAILURE_WINDOW
    assert "_auth_user_id" not in client.session
    # Another username from the same address is not locked out by these failures.
    StaffFactory(username="other", password="fine")
    assert client.post(path, {"username": "other", "password": "fine"}).status_code == 302


def test_a_successful_login_clears_the_failures(settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    StaffFactory(username="ops", password="right")
    client = Client()
    assert client.post("/admin/login/", {"username": "ops", "password": "wrong"}).status_code == 200
    assert client.post("/admin/login/", {"username": "ops", "password": "right"}).status_code == 302
    client.logout()
    assert client.post("/admin/login/", {"username": "ops", "password": "wrong"}).status_code == 200
    assert client.post("/admin/login/", {"username": "ops", "password": "right"}).status_code == 302


# Who asks what, and when (seconds): addresses A and B anonymous, U a logged-in customer; orders 2, anonymous 3 and
# user 4 requests a minute (an anonymous request counts under both the anonymous and the user scope, by address).
SCRIPT = [
    (0.0, "post", "A"),
    (1.0, "post", "A"),
    (2.0, "post", "A"),  # refused by the orders throttle alone: the other two record it
    (3.0, "get", "A"),  # refused by the anonymous one (3 already); the user one records its 4th
    (3.0, "post", "B"),
    (4.0, "post", "U"),
    (5.0, "post", "U"),
    (6.0, "post", "U"),  # refused by the orders throttle
    (7.0, "get", "U"),
    (8.0, "get", "U"),  # refused by the user throttle (4 in the minute)
    (61.5, "post", "A"),  # A's first two requests have left the window
    (62.5, "post", "A"),
    (200.0, "post", "U"),
]


def _checked(check, monkeypatch, user) -> list[Any]:
    """Run SCRIPT through `check` (a view's check_throttles, DRF's or the pipelined one): each request's verdict (the
    wait it was told, or "allowed") and every throttle history in the cache after it."""
    keys = [
        f"throttle_{scope}_{ident}"
        for scope in ("anon", "user", "orders")
        for ident in ("10.9.0.1", "10.9.0.2", user.pk)
    ]
    cache.delete_many(keys)
    factory = APIRequestFactory()
    seen = []
    for at, method, who in SCRIPT:
        monkeypatch.setattr(SimpleRateThrottle, "timer", staticmethod(lambda at=at: at))
        raw = getattr(factory, method)("/api/orders/", REMOTE_ADDR="10.9.0.2" if who == "B" else "10.9.0.1")
        if who == "U":
            force_authenticate(raw, user)
        view = OrderListCreateApi()
        view.setup(raw)
        request = view.initialize_request(raw)
        try:
            check(view, request)
            verdict: Any = "allowed"
        except Throttled as exc:
            verdict = exc.wait
        seen.append((at, method, who, verdict, {key: cache.get(key) for key in keys}))
    return seen


def test_the_pipelined_throttles_give_drfs_verdicts_and_leave_its_histories(rates, monkeypatch):
    rates(anon="3/minute", user="4/minute", orders="2/minute")
    user = UserFactory(username="throttled")
    drf = _checked(APIView.check_throttles, monkeypatch, user)
    pipelined = _checked(PipelinedThrottles.check_throttles, monkeypatch, user)
    assert pipelined == drf
    refused = [(at, wait) for at, _, _, wait, _ in drf if wait != "allowed"]
    assert [at for at, _ in refused] == [2.0, 3.0, 6.0, 8.0]


def test_a_placed_order_reads_and_writes_its_three_throttles_in_one_round_trip_each(api, product, rates, monkeypatch):
    rates(anon="100/minute", user="100/minute", orders="100/minute")
    calls = []
    for name in ("get", "set", "get_many", "set_many"):
        method = getattr(cache, name)
        monkeypatch.setattr(
            cache,
            name,
            lambda *args, name=name, method=method, **kwargs: (calls.append(name), method(*args, **kwargs))[1],
        )
    assert place(api).status_code == 202
    throttle_calls = [name for name in calls if name != "get"]  # the catalog's version token is a get of its own
    assert throttle_calls == ["get_many", "set_many"]


def test_a_unicode_variant_of_a_locked_username_is_locked_too(settings):
    # The login form normalizes usernames (NFKC): with a fullwidth r (U+FF52), `rtstaff` logs in as `rtstaff`, so
    # it counts as it.
    settings.LOGIN_FAILURE_LIMIT = 3
    StaffFactory(username="rtstaff", password="right")
    client = Client()
    for username in ("rtstaff", "ｒtstaff", " RTstaff"):
        assert client.post("/admin/login/", {"username": username, "password": "wrong"}).status_code == 200
    for username in ("rtstaff", "ｒtstaff", "ｒｔｓｔａｆｆ", "RTSTAFF"):
        assert client.post("/admin/login/", {"username": username, "password": "right"}).status_code == 429
    assert "_auth_user_id" not in client.session


def test_random_usernames_from_one_address_trip_the_address_limit(settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 5
    StaffFactory(username="ops", password="right")
    checked = []
    user_login_failed.connect(receiver := lambda **kwargs: checked.append(kwargs))
    try:
        client = Client()
        for n in range(5):
            assert client.post("/admin/login/", {"username": f"nobody-{n}", "password": "x"}).status_code == 200
        # Past the limit no password is checked (each check hashes one), whatever the username, a real one included.
        for username in ("nobody-new", "ops"):
            refused = client.post("/admin/login/", {"username": username, "password": "right"})
            assert refused.status_code == 429
            assert int(refused["Retry-After"]) == settings.LOGIN_FAILURE_WINDOW
        assert len(checked) == 5
        # Another address is not held back.
        other = Client(REMOTE_ADDR="192.0.2.7")
        assert other.post("/admin/login/", {"username": "ops", "password": "right"}).status_code == 302
    finally:
        user_login_failed.disconnect(receiver)
