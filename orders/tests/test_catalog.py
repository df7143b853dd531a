"""The accept path's catalog copy (orders/catalog.py) against a fresh query: they agree after every kind of change,
in this process and (through the version token in Redis) in another, and without Redis the fresh query is used."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest
from django.core.cache import cache

from orders import catalog
from orders.models import Product
from orders.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def make_product(**fields: object) -> Product:
    return ProductFactory(**fields)  # type: ignore[return-value]  # factory_boy's types name the factory


def as_prices(products: dict[str, Product]) -> dict[str, tuple[int, Decimal]]:
    return {sku: (p.pk, p.price) for sku, p in products.items()}


def agree(skus: list[str]) -> dict[str, tuple[int, Decimal]]:
    cached, fresh = catalog.catalog_read(skus), catalog.catalog_read_reference(skus)
    assert as_prices(cached) == as_prices(fresh)
    return as_prices(cached)


def another_process_changes_the_price(product: Product, price: str) -> None:
    """What a save in another process amounts to, seen from here: the row changes (no signal in this process) and
    the token in Redis is replaced after its commit."""
    Product.objects.filter(pk=product.pk).update(price=Decimal(price))
    cache.set(catalog.VERSION_KEY, "another-process", timeout=None)


def test_the_copy_serves_without_a_query_and_agrees_with_a_fresh_read(django_assert_num_queries):
    book, pen = make_product(price=Decimal("12.50")), make_product(price=Decimal("1.99"))
    skus = [book.sku, pen.sku, "NO-SUCH-SKU"]
    assert agree(skus) == {book.sku: (book.pk, Decimal("12.50")), pen.sku: (pen.pk, Decimal("1.99"))}
    with django_assert_num_queries(1):  # the unknown sku is looked up again; the known ones are not
        assert set(catalog.catalog_read(skus)) == {book.sku, pen.sku}
    with django_assert_num_queries(0):
        assert set(catalog.catalog_read([book.sku])) == {book.sku}


def test_a_save_in_this_process_is_seen_at_once_and_by_the_others_after_commit(django_capture_on_commit_callbacks):
    book = make_product(price=Decimal("12.50"))
    agree([book.sku])
    token = cache.get(catalog.VERSION_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        book.price = Decimal("14.00")
        book.save()
        assert agree([book.sku]) == {book.sku: (book.pk, Decimal("14.00"))}  # before the commit, in this process
    assert cache.get(catalog.VERSION_KEY) != token  # after it, for every process


def test_a_change_in_another_process_is_seen_through_the_token():
    book = make_product(price=Decimal("12.50"))
    agree([book.sku])
    another_process_changes_the_price(book, "9.75")
    assert agree([book.sku]) == {book.sku: (book.pk, Decimal("9.75"))}


def test_created_deleted_and_recreated_products(django_capture_on_commit_callbacks):
    assert agree(["LATE-1"]) == {}
    with django_capture_on_commit_callbacks(execute=True):
        late = make_product(sku="LATE-1", price=Decimal("3.00"))
    assert agree(["LATE-1"]) == {"LATE-1": (late.pk, Decimal("3.00"))}
    with django_capture_on_commit_callbacks(execute=True):
        late.delete()
    assert agree(["LATE-1"]) == {}
    with django_capture_on_commit_callbacks(execute=True):
        again = make_product(sku="LATE-1", price=Decimal("4.00"))
    assert agree(["LATE-1"]) == {"LATE-1": (again.pk, Decimal("4.00"))}


def test_a_flushed_cache_makes_every_process_read_again():
    book = make_product(price=Decimal("12.50"))
    agree([book.sku])
    Product.objects.filter(pk=book.pk).update(price=Decimal("8.00"))
    cache.delete(catalog.VERSION_KEY)  # the dashboard's "flush cache", a Redis restart
    assert agree([book.sku]) == {book.sku: (book.pk, Decimal("8.00"))}


def test_entries_older_than_max_age_are_read_again(monkeypatch):
    book = make_product(price=Decimal("12.50"))
    agree([book.sku])
    Product.objects.filter(pk=book.pk).update(price=Decimal("7.00"))  # a change whose token replacement was lost
    monkeypatch.setattr(catalog, "MAX_AGE", 0.0)
    assert agree([book.sku]) == {book.sku: (book.pk, Decimal("7.00"))}


def test_without_redis_every_read_is_a_fresh_query(settings, django_assert_num_queries):
    book = make_product(price=Decimal("12.50"))
    agree([book.sku])
    with socket.socket() as sock:  # a port nobody listens on: Redis refused, as when it is down
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{dead}/0"}}
    Product.objects.filter(pk=book.pk).update(price=Decimal("6.00"))
    with django_assert_num_queries(2):  # catalog_read's own query, and the reference's
        assert agree([book.sku]) == {book.sku: (book.pk, Decimal("6.00"))}


def test_the_api_prices_an_order_at_the_price_after_a_change(api, django_capture_on_commit_callbacks):
    book = make_product(price=Decimal("12.50"))

    def place() -> dict:
        response = api.post(
            "/api/orders/", {"customer_email": "a@example.com", "items": [{"sku": book.sku, "quantity": 2}]}, "json"
        )
        assert response.status_code == 202, response.content
        return response.json()

    assert place()["total"] == "25.00"
    with django_capture_on_commit_callbacks(execute=True):
        book.price = Decimal("20.00")
        book.save()
    assert place()["total"] == "40.00"
    another_process_changes_the_price(book, "1.00")
    assert place()["total"] == "2.00"
