"""The unsafe modes are sandbox only: refused when ORDERPIPE_SANDBOX=false, and ignored if a row was left unsafe."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from orders import cache, sandbox
from orders.models import GatewayCharge, Order, OutboxMessage, SandboxSettings
from orders.sandbox.faults import Faults
from orders.tests.factories import AdminFactory, ProductFactory, StaffFactory
from worker.processing import ACK, Processor
from worker.tests.conftest import delivery_for

pytestmark = pytest.mark.django_db

# Every unsafe value of every mode (and the accept fault, which fails requests).
UNSAFE = [
    ("ack_mode", "on_receive"),
    ("publish_mode", "dual_write"),
    ("publish_mode", "publish_first"),
    ("step_guards", False),
    ("cache_mode", "cache_aside"),
    ("cache_mode", "off"),
    ("accept_failure_rate", 1.0),
    ("stock_update", "read_modify_write"),
    ("queue_overflow", "drop_head"),
    ("retry_backoff", "fixed"),
]


@pytest.fixture
def production(settings):
    settings.ORDERPIPE_SANDBOX = False
    sandbox.reader.invalidate()
    yield settings
    sandbox.reader.invalidate()


def left_unsafe() -> None:
    """A row left unsafe in the database (set while the sandbox was on, or written by hand)."""
    SandboxSettings.load()
    SandboxSettings.objects.update(
        ack_mode="on_receive",
        publish_mode="dual_write",
        step_guards=False,
        cache_mode="off",
        accept_failure_rate=1.0,
        stock_update="read_modify_write",
        queue_overflow="drop_head",
        retry_backoff="fixed",
    )
    sandbox.reader.invalidate()


@pytest.mark.parametrize(("field", "value"), UNSAFE)
def test_each_unsafe_mode_is_refused_when_the_sandbox_is_off(production, field, value):
    with pytest.raises(ValidationError) as refused:
        sandbox.sandbox_update(changes={field: value}, via="test")
    assert field in refused.value.message_dict
    with pytest.raises(CommandError, match=field):
        call_command("sandbox", "set", f"{field}={str(value).lower()}")
    assert SandboxSettings.load().as_dict()[field] == sandbox.DEFAULTS[field]


def test_the_admin_refuses_an_unsafe_mode_with_a_form_error_when_the_sandbox_is_off(production, client):
    client.force_login(AdminFactory(username="admin"))
    row = SandboxSettings.load()
    form = {name: "" if value is None else value for name, value in row.as_dict().items()}
    form.update({"ack_mode": "on_receive", "step_guards": "on"})
    response = client.post(f"/admin/orders/sandboxsettings/{row.pk}/change/", form)
    assert response.status_code == 200
    assert "refused when ORDERPIPE_SANDBOX=false" in response.content.decode()
    assert SandboxSettings.load().ack_mode == "after_commit"


def test_safe_values_are_still_accepted_when_the_sandbox_is_off(production):
    sandbox.sandbox_update(changes={"ack_mode": "after_commit", "step_guards": True}, via="test")


def test_a_row_left_unsafe_does_nothing_when_the_sandbox_is_off(production, staff_api):
    left_unsafe()
    assert sandbox.modes() == sandbox.SAFE_MODES
    assert Faults().modes() == sandbox.SAFE_MODES
    assert sandbox.sandbox_state()["unsafe_modes"] == []
    ProductFactory(sku="BOOK-001", stock=10)

    # publish_mode=dual_write and accept_failure_rate=1 ignored: accepted with an outbox row.
    response = staff_api.post(
        "/api/orders/",
        data=json.dumps({"customer_email": "a@example.com", "items": [{"sku": "BOOK-001", "quantity": 1}]}),
        content_type="application/json",
    )
    assert response.status_code == 202
    order = Order.objects.get(pk=response.json()["id"])
    assert OutboxMessage.objects.filter(order=order).count() == 1

    # step_guards=off ignored: the gateway is called with the order id as its idempotency key.
    assert Processor(faults=Faults()).process(delivery_for(order)) == ACK
    assert GatewayCharge.objects.get(order_ref=str(order.id)).idempotency_key == str(order.id)

    # cache_mode=off ignored: the worker wrote the cache through, so the read is a hit.
    assert cache.order_state(order.id)["present"]
    assert staff_api.get(f"/api/orders/{order.id}/")["X-Cache"] == "HIT"


def test_the_sandbox_api_refuses_a_mode_value_it_does_not_know_with_the_field(staff_api):
    response = staff_api.patch("/api/sandbox/", data=json.dumps({"ack_mode": "never"}), content_type="application/json")
    assert response.status_code == 400
    assert "ack_mode" in response.json()


def test_the_red_banner_names_the_unsafe_modes_on_every_page(client):
    sandbox.sandbox_update(
        changes={
            "ack_mode": "on_receive",
            "step_guards": False,
            "stock_update": "read_modify_write",
            "queue_overflow": "drop_head",
            "retry_backoff": "fixed",
        },
        via="test",
    )
    client.force_login(StaffFactory(username="staff"))
    page = client.get("/").content.decode()
    assert 'id="unsafe-banner"' in page
    assert (
        "ack_mode=on_receive, step_guards=false, stock_update=read_modify_write, queue_overflow=drop_head, "
        "retry_backoff=fixed" in page
    )
    sandbox.sandbox_restore_safe_modes(via="test")
    assert sandbox.sandbox_state()["unsafe_modes"] == []
