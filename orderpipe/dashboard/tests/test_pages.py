"""The dashboard and journey pages: who may read them, and that controls appear only for staff in the sandbox."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from orderpipe.dashboard import feed
from orderpipe.dashboard.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND
from orders import cache, services
from orders.models import OrderStatus
from orders.sandbox import BURST_MAX
from orders.serializers import MAX_QUANTITY
from orders.tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(StaffFactory(username="staff"))
    return client


@pytest.fixture
def order(product):
    return services.order_create(customer_email="page@example.com", items=[{"sku": product.sku, "quantity": 1}])


def test_pages_need_a_login_outside_debug(client, order):
    for url in ["/", f"/orders/{order.pk}/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")


def test_pages_are_readable_without_login_in_debug(client, settings, order):
    settings.DEBUG = True
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert b'id="initial-state"' in dashboard.content
    assert b"need a staff login" in dashboard.content
    assert b'id="burst-count"' not in dashboard.content
    journey = client.get(f"/orders/{order.pk}/")
    assert journey.status_code == 200
    assert str(order.pk).encode() in journey.content
    assert b'id="next-step"' not in journey.content


def test_staff_see_every_labelled_control(staff_client, order):
    content = staff_client.get("/").content.decode()
    for control in [
        "order-email",
        "order-sku",
        "order-quantity",
        "burst-count",
        "sandbox-step-delay",
        "sandbox-decline-rate",
        "sandbox-transient-rate",
        "sandbox-crash-rate",
        "sandbox-paused",
        "sandbox-step-mode",
        "purge-queue",
    ]:
        assert f'<label for="{control}">' in content
        assert f'id="{control}"' in content
    assert 'id="next-step"' in staff_client.get(f"/orders/{order.pk}/").content.decode()


def test_no_control_is_rendered_outside_the_sandbox(staff_client, settings, order):
    settings.ORDERPIPE_SANDBOX = False
    assert b'id="burst-count"' not in staff_client.get("/").content
    assert b'id="next-step"' not in staff_client.get(f"/orders/{order.pk}/").content


def test_pages_tell_live_js_which_port_the_sockets_are_on(staff_client, settings, order):
    for url in ["/", f"/orders/{order.pk}/"]:
        assert b'<body data-websocket-port="">' in staff_client.get(url).content, url
    settings.WEBSOCKET_PORT = 8001
    for url in ["/", f"/orders/{order.pk}/"]:
        assert b'<body data-websocket-port="8001">' in staff_client.get(url).content, url


def test_the_journey_of_an_unknown_order_is_404(staff_client):
    assert staff_client.get("/orders/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_ensure_demo_staff_is_idempotent_and_debug_only(settings, capsys):
    call_command("ensure_demo_staff")
    assert not get_user_model().objects.exists()
    settings.DEBUG = True
    call_command("ensure_demo_staff")
    call_command("ensure_demo_staff")
    user = get_user_model().objects.get()
    assert user.is_staff and user.check_password("orderpipe-demo")
    assert "username 'demo' password 'orderpipe-demo'" in capsys.readouterr().out


def input_tag(html: str, input_id: str) -> str:
    match = re.search(rf'<input id="{input_id}"[^>]*>', html)
    assert match is not None, input_id
    return match[0]


def test_pages_hand_the_scripts_the_limits_and_urls_the_server_enforces(staff_client, order):
    for url in ["/", f"/orders/{order.pk}/"]:
        html = staff_client.get(url).content.decode()
        script = re.search(r'<script id="orderpipe-config" type="application/json">(.*?)</script>', html)
        assert script is not None
        config = json.loads(script[1])
        assert config["limits"]["quantity"] == {"min": 1, "max": MAX_QUANTITY}
        assert config["limits"]["burst"]["max"] == BURST_MAX
        assert config["limits"]["step_delay_ms"] == {"min": 0, "max": 60_000}
        assert config["feedLength"] == feed.FEED_LENGTH
        assert config["closeCodes"] == {"forbidden": CLOSE_FORBIDDEN, "notFound": CLOSE_NOT_FOUND}
        assert sorted(config["terminalStatuses"]) == sorted(OrderStatus.terminal())
        journey = config["urls"]["journey"].replace(config["orderIdPlaceholder"], str(order.pk))
        assert staff_client.get(journey).status_code == 200
        socket = config["urls"]["journeySocket"].replace(config["orderIdPlaceholder"], str(order.pk))
        assert socket == f"/ws/orders/{order.pk}/"
    dashboard = staff_client.get("/").content.decode()
    quantity_input = input_tag(dashboard, "order-quantity")
    assert 'min="1"' in quantity_input
    assert f'max="{MAX_QUANTITY}"' in quantity_input
    assert f'max="{BURST_MAX}"' in input_tag(dashboard, "burst-count")


def test_the_page_scripts_hold_no_copy_of_a_server_constant():
    """URLs, close codes, limits and statuses reach the JS through the page's config only."""
    for script in (Path(__file__).resolve().parents[2] / "static" / "js").glob("*.js"):
        source = script.read_text()
        for literal in ["/api/", "/ws/", "/orders/", "4403", "4404", "dead_lettered", "180", "10000"]:
            assert literal not in source, f"{script.name} hard-codes {literal!r}"


def banner_of(content: bytes) -> tuple[str, str] | None:
    """The banner's opening tag and its inside, or None when the page has none."""
    found = re.search(r'(<div id="fault-banner"[^>]*>)(.*?)</div>', content.decode(), re.S)
    return (found.group(1), found.group(2)) if found else None


def test_every_page_names_the_active_faults_in_a_banner(staff_client, settings, order):
    from django.test import Client

    from orders import sandbox

    pages = ["/", f"/orders/{order.pk}/"]
    for url in pages:
        tag, _inside = banner_of(staff_client.get(url).content)
        assert "hidden" in tag
    sandbox.sandbox_update(changes={"crash_rate": 1.0, "paused": True}, via="test")
    for url in pages:
        tag, inside = banner_of(staff_client.get(url).content)
        assert "hidden" not in tag
        assert "crash rate 1, consumption paused" in inside
        assert 'id="restore-defaults"' in inside
    # Watchers (DEBUG, no login) see the banner without the button; outside the sandbox there is none.
    settings.DEBUG = True
    _tag, inside = banner_of(Client().get("/").content)
    assert "crash rate 1" in inside and 'id="restore-defaults"' not in inside
    settings.ORDERPIPE_SANDBOX = False
    assert banner_of(staff_client.get("/").content) is None


def test_a_journey_page_view_counts_as_a_page_read_never_as_a_cache_hit_or_miss(staff_client, order):
    before = cache.stats()
    assert staff_client.get(f"/orders/{order.pk}/").status_code == 200
    after_page = cache.stats()
    assert after_page["page_reads"] == before["page_reads"] + 1
    assert (after_page["hits"], after_page["misses"]) == (before["hits"], before["misses"])

    # The API's read goes through the cache and is counted there (a miss, then a hit), not as a page read.
    for expected in ("MISS", "HIT"):
        assert staff_client.get(f"/api/orders/{order.pk}/")["X-Cache"] == expected
    after_api = cache.stats()
    assert (after_api["hits"], after_api["misses"]) == (before["hits"] + 1, before["misses"] + 1)
    assert after_api["page_reads"] == after_page["page_reads"]
    # An unknown order's page is a 404 and no read.
    assert staff_client.get("/orders/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert cache.stats()["page_reads"] == after_page["page_reads"]

    # The dashboard labels them apart, so the hit ratio reads as the API's.
    html = staff_client.get("/").content.decode()
    assert "API hit ratio" in html and 'id="n-page-reads"' in html and "page reads (PostgreSQL)" in html


def test_ensure_demo_staff_keeps_a_password_that_works_so_sessions_survive_a_restart(settings, client):
    settings.DEBUG = True
    call_command("ensure_demo_staff")
    assert client.login(username="demo", password="orderpipe-demo")
    assert client.get("/api/sandbox/").status_code == 200
    password_hash = get_user_model().objects.get().password
    call_command("ensure_demo_staff")  # the next `make run`
    assert get_user_model().objects.get().password == password_hash
    assert client.get("/api/sandbox/").status_code == 200  # still logged in
    # A changed password is put back.
    user = get_user_model().objects.get()
    user.set_password("something-else")
    user.save()
    call_command("ensure_demo_staff")
    assert get_user_model().objects.get().check_password("orderpipe-demo")


def test_the_favicon_every_browser_asks_for_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] in {"image/x-icon", "image/vnd.microsoft.icon"}
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an ICO file's header
