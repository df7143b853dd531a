from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from orders.models import IdempotencyKey, Order, OutboxMessage
from orders.services import idempotency_keys_purge

BODY = {"customer_email": "idem@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}


def post(api, body, key):
    return api.post("/api/orders/", data=json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db
def test_the_same_key_and_body_returns_the_first_response_again(api, product):
    first = post(api, BODY, "key-1")
    again = post(api, BODY, "key-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert again["Location"] == first["Location"]
    assert Order.objects.count() == 1
    assert OutboxMessage.objects.count() == 1


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_a_422(api, product):
    post(api, BODY, "key-2")
    response = post(api, {**BODY, "note": "different"}, "key-2")
    assert response.status_code == 422
    assert "different request body" in response.json()["detail"]
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_a_key_over_255_characters_is_a_400(api, product):
    response = post(api, BODY, "k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_an_invalid_body_with_a_key_stores_nothing(api, product):
    assert post(api, {"customer_email": "x"}, "key-3").status_code == 400
    assert not IdempotencyKey.objects.exists()
    assert post(api, BODY, "key-3").status_code == 202


@pytest.mark.django_db
def test_keys_expire_after_24_hours(api, product):
    first = post(api, BODY, "key-4").json()["id"]
    IdempotencyKey.objects.filter(key="key-4").update(expires_at=timezone.now() - timedelta(seconds=1))
    second = post(api, BODY, "key-4")
    assert second.status_code == 202
    assert "Idempotent-Replayed" not in second
    assert second.json()["id"] != first
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert idempotency_keys_purge() == 1


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_identical_requests_create_one_order(product):
    barrier = threading.Barrier(20)
    results: list[tuple[int, str, str | None]] = []
    lock = threading.Lock()

    def send() -> None:
        client = APIClient()
        barrier.wait()
        try:
            response = post(client, BODY, "concurrent-key")
            with lock:
                results.append((response.status_code, response.json().get("id"), response.get("Idempotent-Replayed")))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert Order.objects.count() == 1
    order_id = str(Order.objects.get().pk)
    assert {status for status, _, _ in results} <= {202, 409}
    assert {oid for status, oid, _ in results if status == 202} == {order_id}
    assert sum(1 for status, _, replayed in results if status == 202 and replayed is None) == 1
