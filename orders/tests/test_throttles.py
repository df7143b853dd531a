"""Limits: DRF throttles (anonymous, per user, and the stricter one for placing orders) answer 429 JSON with
Retry-After; Basic auth is ignored outside DEBUG; the login forms lock a username (as the form normalizes it) per
address, and an address whatever the usernames, after failures."""

from __future__ import annotations

import base64
import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.test import Client
from rest_framework.test import APIClient

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
    user.force_login(get_user_model().objects.create_user("customer", password=None))
    assert [user.get("/api/products/").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_basic_header_is_not_checked_outside_debug(api, product):
    get_user_model().objects.create_user("ops", password="right", is_staff=True)
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
    get_user_model().objects.create_user("ops", password="right", is_staff=True)
    right = "Basic " + base64.b64encode(b"ops:right").decode()
    assert api.get("/api/sandbox/", HTTP_AUTHORIZATION=right).status_code == 200


@pytest.mark.parametrize("path", ["/admin/login/", "/api-auth/login/"])
def test_logins_lock_a_username_per_address_after_failures(path, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    get_user_model().objects.create_user("ops", password="right", is_staff=True)
    client = Client()
    for _ in range(3):
        assert client.post(path, {"username": "ops", "password": "wrong"}).status_code == 200  # the form again
    locked = client.post(path, {"username": "ops", "password": "right"})
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == settings.LOGIN_FAILURE_WINDOW
    assert "_auth_user_id" not in client.session
    # Another username from the same address is not locked out by these failures.
    get_user_model().objects.create_user("other", password="fine", is_staff=True)
    assert client.post(path, {"username": "other", "password": "fine"}).status_code == 302


def test_a_successful_login_clears_the_failures(settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    get_user_model().objects.create_user("ops", password="right", is_staff=True)
    client = Client()
    assert client.post("/admin/login/", {"username": "ops", "password": "wrong"}).status_code == 200
    assert client.post("/admin/login/", {"username": "ops", "password": "right"}).status_code == 302
    client.logout()
    assert client.post("/admin/login/", {"username": "ops", "password": "wrong"}).status_code == 200
    assert client.post("/admin/login/", {"username": "ops", "password": "right"}).status_code == 302


def test_a_unicode_variant_of_a_locked_username_is_locked_too(settings):
    # The login form normalizes usernames (NFKC): with a fullwidth r (U+FF52), `rtstaff` logs in as `rtstaff`, so
    # it counts as it.
    settings.LOGIN_FAILURE_LIMIT = 3
    get_user_model().objects.create_user("rtstaff", password="right", is_staff=True)
    client = Client()
    for username in ("rtstaff", "ｒtstaff", " RTstaff"):
        assert client.post("/admin/login/", {"username": username, "password": "wrong"}).status_code == 200
    for username in ("rtstaff", "ｒtstaff", "ｒｔｓｔａｆｆ", "RTSTAFF"):
        assert client.post("/admin/login/", {"username": username, "password": "right"}).status_code == 429
    assert "_auth_user_id" not in client.session


def test_random_usernames_from_one_address_trip_the_address_limit(settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 5
    get_user_model().objects.create_user("ops", password="right", is_staff=True)
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
