"""Every error on the machine-facing URLs (/api/, /healthz, /readyz, /metrics) is JSON with the right status,
whoever produces it: DRF, Django's URL resolver, the CSRF check, the body limits (orders/middleware.py)."""

from __future__ import annotations

import json
import socket

import pytest
from django.test import Client

from orders.models import Order
from worker.tests.processes import GunicornWeb

pytestmark = pytest.mark.django_db

URL = "/api/orders/"


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    body = response.json()
    assert body["detail"]
    return body


def test_a_deeply_nested_json_body_is_a_400_not_a_500(api):
    bomb = "[" * 1000 + "]" * 1000  # 2 KB
    response = api.post(URL, data=bomb, content_type="application/json")
    assert "too deeply nested" in assert_json_error(response, 400)["detail"]
    assert not Order.objects.exists()


def test_a_body_over_the_upload_limit_is_a_413_json(api, settings):
    response = api.post(URL, data=b"x" * (10 * 1024 * 1024), content_type="application/json")
    assert_json_error(response, 413)
    assert not Order.objects.exists()


@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_url_is_a_404_json(api, settings, debug):
    settings.DEBUG = debug
    assert_json_error(api.get("/api/no-such-thing/"), 404)
    assert_json_error(api.post("/api/no-such-thing/", data="{}", content_type="application/json"), 404)


def test_a_wrong_method_is_a_405_json_whoever_asks(staff_api, api):
    # The method is wrong whoever sends it: 405 before the permission check (which would say 403 to anonymous).
    for client in (staff_api, api):
        response = client.delete(URL)
        assert assert_json_error(response, 405)["code"] == "method_not_allowed"
        assert response["Allow"] == "GET, POST, HEAD, OPTIONS"
    response = api.post("/api/products/", data="{}", content_type="application/json")
    assert_json_error(response, 405)
    assert response["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_the_schema_and_docs_refuse_anonymous_readers_in_json(api, path):
    # They render as YAML and HTML when allowed; a refusal under /api/ is JSON all the same.
    assert assert_json_error(api.get(path), 403)["code"] == "forbidden"


def test_a_nul_byte_in_a_basic_username_is_a_bad_login_not_a_database_error(api, settings):
    settings.DEBUG = True
    response = api.get("/api/orders/", HTTP_AUTHORIZATION="Basic YQBiOng=")  # "a\0b:x"
    # 403, not 401: the session is the first authenticator, and it names no WWW-Authenticate challenge.
    assert response.status_code == 403, response.content[:300]
    assert response.json() == {"detail": "Invalid username/password.", "code": "authentication_failed"}


def test_posting_to_healthz_is_a_405_json_not_a_csrf_page():
    # A browser-like client: Django's test client skips the CSRF check unless asked.
    client = Client(enforce_csrf_checks=True)
    for path in ("/healthz", "/readyz", "/metrics"):
        response = client.post(path)
        assert_json_error(response, 405)
        assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/", "/admin/", "/api/orders/", "/healthz"])
def test_trace_is_refused_with_the_allowed_methods(admin_client, path):
    # (A client the API would refuse anyway gets its 403 first.)
    response = admin_client.generic("TRACE", path)
    assert_json_error(response, 405)
    assert "GET" in response["Allow"]


def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_chunked_post_under_gunicorn_is_a_411_json(tmp_path):
    """WSGI hands Django no Content-Length for a chunked body and Django reads it as empty (the order used to be
    refused for a missing email it did send). It is refused as what it is, before anything reads it."""
    body = json.dumps({"customer_email": "chunked@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]})
    chunked = f"{len(body):x}\r\n{body}\r\n0\r\n\r\n".encode()
    http = GunicornWeb(log_dir=tmp_path).start()
    try:
        http.wait_ready()
        status, answer = raw_http(
            http.port,
            b"POST /api/orders/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked,
        )
    finally:
        http.stop()
    assert status == 411, answer
    assert b'"code": "length_required"' in answer
    assert not Order.objects.exists()
