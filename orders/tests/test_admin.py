from __future__ import annotations

import pytest
from django.core.management import call_command

from orders import services
from orders.models import Order, Product
from orders.tests.factories import AdminFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(AdminFactory(username="root"))
    return client


@pytest.fixture
def two_orders(product):
    ada = services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    bob = services.order_create(customer_email="bob@example.com", items=[{"sku": "BOOK-001", "quantity": 2}])
    Order.objects.filter(pk=bob.pk).update(status="completed")
    return ada, bob


def test_orders_are_searchable_by_email_and_by_id_prefix(admin_client, two_orders):
    ada, bob = two_orders
    by_email = admin_client.get("/admin/orders/order/", {"q": "ADA@example"}).content.decode()
    assert str(ada.pk) in by_email and str(bob.pk) not in by_email
    by_id = admin_client.get("/admin/orders/order/", {"q": str(bob.pk)[:8]}).content.decode()
    assert str(bob.pk) in by_id and str(ada.pk) not in by_id


def test_orders_filter_by_status(admin_client, two_orders):
    ada, bob = two_orders
    page = admin_client.get("/admin/orders/order/", {"status__exact": "completed"}).content.decode()
    assert str(bob.pk) in page and str(ada.pk) not in page


def test_an_order_page_shows_its_lines_and_events_read_only(admin_client, two_orders):
    ada, _ = two_orders
    page = admin_client.get(f"/admin/orders/order/{ada.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "BOOK-001" in html
    assert "accepted" in html and "&quot;db&quot;" in html  # the event's snapshot, rendered as JSON
    assert 'name="status"' not in html  # statuses change only through the pipeline


@pytest.mark.parametrize(
    "url",
    [
        "/admin/orders/product/",
        "/admin/orders/outboxmessage/",
        "/admin/orders/payment/",
        "/admin/orders/sandboxsettings/",
    ],
)
def test_the_other_admin_pages_render(admin_client, two_orders, url):
    assert admin_client.get(url).status_code == 200


def test_seed_demo_is_idempotent():
    call_command("seed_demo")
    Product.objects.filter(sku="BOOK-001").update(stock=3)
    call_command("seed_demo")
    assert Product.objects.count() == 6
    assert Product.objects.get(sku="BOOK-001").stock == 3
    call_command("seed_demo", "--reset-stock")
    assert Product.objects.get(sku="BOOK-001").stock == 1000


def test_an_order_links_to_its_journey(admin_client, two_orders):
    ada, _bob = two_orders
    journey = f'href="/orders/{ada.pk}/"'
    assert journey in admin_client.get(f"/admin/orders/order/{ada.pk}/change/").content.decode()
    assert journey in admin_client.get("/admin/orders/order/").content.decode()


def test_the_fault_history_prints_booleans_one_way(admin_client):
    from orders import sandbox
    from orders.models import SandboxChange

    sandbox.sandbox_update(changes={"paused": True}, via="test")
    sandbox.sandbox_update(changes={"paused": False, "worker_concurrency": 2}, via="test")
    page = admin_client.get("/admin/orders/sandboxchange/").content.decode()
    cells = [c for c in ("true", "false", "True", "False") if f">{c}</td>" in page]
    assert cells == ["true", "false"]
    assert ">default</td>" in page
    change = SandboxChange.objects.filter(field="paused").first()
    assert admin_client.get(f"/admin/orders/sandboxchange/{change.pk}/change/").status_code == 200
