"""Deleting an order: its Redis entry goes too (real Redis), and the admin warns before deleting one in flight."""

from __future__ import annotations

import pytest

from orders import cache, services
from orders.models import Order, OrderStatus
from orders.serializers import order_representation
from orders.tests.factories import AdminFactory

# The eviction runs after the commit, so these tests commit for real.
pytestmark = pytest.mark.django_db(transaction=True)

WARNING = "still in the pipeline"


@pytest.fixture
def admin_client(client):
    client.force_login(AdminFactory(username="root"))
    return client


def cached_order(product, *, status: str = OrderStatus.PENDING) -> Order:
    order = services.order_create(customer_email="gone@example.com", items=[{"sku": product.sku, "quantity": 1}])
    Order.objects.filter(pk=order.pk).update(status=status)
    order.refresh_from_db()
    assert cache.write_order(order_representation(order))["written"]
    assert cache.order_state(order.pk)["present"]
    return order


def test_deleting_an_order_from_the_admin_evicts_it_from_redis(admin_client, product):
    order = cached_order(product, status=OrderStatus.COMPLETED)
    response = admin_client.post(f"/admin/orders/order/{order.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Order.objects.filter(pk=order.pk).exists()
    assert not cache.order_state(order.pk)["present"]
    assert cache.read_order(order.pk) is None


def test_the_admins_bulk_delete_evicts_every_order(admin_client, product):
    orders = [cached_order(product, status=OrderStatus.FAILED) for _ in range(3)]
    kept = cached_order(product, status=OrderStatus.COMPLETED)
    response = admin_client.post(
        "/admin/orders/order/",
        {"action": "delete_selected", "_selected_action": [str(o.pk) for o in orders], "post": "yes"},
    )
    assert response.status_code == 302
    assert [cache.order_state(o.pk)["present"] for o in orders] == [False, False, False]
    assert cache.order_state(kept.pk)["present"]


def test_a_queryset_delete_evicts_after_the_commit(product):
    order = cached_order(product, status=OrderStatus.COMPLETED)
    Order.objects.filter(pk=order.pk).delete()
    assert not cache.order_state(order.pk)["present"]


def test_a_rolled_back_delete_keeps_the_entry(product):
    from django.db import transaction

    order = cached_order(product, status=OrderStatus.COMPLETED)
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.filter(pk=order.pk).delete()
        raise RuntimeError("rolled back")
    assert Order.objects.filter(pk=order.pk).exists()
    assert cache.order_state(order.pk)["present"]


def test_the_delete_page_of_an_in_flight_order_warns(admin_client, product):
    in_flight = cached_order(product, status=OrderStatus.PROCESSING)
    done = cached_order(product, status=OrderStatus.COMPLETED)
    page = admin_client.get(f"/admin/orders/order/{in_flight.pk}/delete/").content.decode()
    assert WARNING in page and f"{str(in_flight.pk)[:8]} (processing)" in page
    assert WARNING not in admin_client.get(f"/admin/orders/order/{done.pk}/delete/").content.decode()


def test_the_bulk_delete_confirmation_warns_about_in_flight_orders(admin_client, product):
    in_flight = [cached_order(product, status=s) for s in (OrderStatus.PENDING, OrderStatus.RETRYING)]
    done = cached_order(product, status=OrderStatus.DEAD_LETTERED)
    selected = [str(o.pk) for o in [*in_flight, done]]
    page = admin_client.post(
        "/admin/orders/order/", {"action": "delete_selected", "_selected_action": selected}
    ).content.decode()
    assert "2 of these orders are still in the pipeline" in page
    assert Order.objects.count() == 3  # only the confirmation page so far
    only_done = admin_client.post(
        "/admin/orders/order/", {"action": "delete_selected", "_selected_action": [str(done.pk)]}
    )
    assert WARNING not in only_done.content.decode()
