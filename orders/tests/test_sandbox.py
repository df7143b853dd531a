from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from orders import sandbox, services
from orders.models import EventKind, OrderEvent, SandboxChange, SandboxSettings, StepGrant
from orders.tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(api):
    user = StaffFactory(username="staff", password="pw")
    api.force_authenticate(user)
    return api


def patch(api, data):
    return api.patch("/api/sandbox/", data=json.dumps(data), content_type="application/json")


def test_all_faults_are_off_by_default(staff_api):
    body = staff_api.get("/api/sandbox/").json()
    assert {k: body[k] for k in SandboxSettings.FIELDS} == sandbox.DEFAULTS


def test_staff_change_settings_and_every_change_is_recorded(staff_api):
    response = patch(staff_api, {"step_delay_ms": 250, "decline_rate": 0.2})
    assert response.status_code == 200
    assert (response.json()["step_delay_ms"], response.json()["decline_rate"]) == (250, 0.2)
    changes = {(c.field, c.old_value, c.new_value, c.changed_by, c.via) for c in SandboxChange.objects.all()}
    assert changes == {("step_delay_ms", 0, 250, "staff", "api"), ("decline_rate", 0.0, 0.2, "staff", "api")}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"decline_rate": 1.5}, "decline_rate"),
        ({"crash_rate": -0.1}, "crash_rate"),
        ({"step_delay_ms": 60_001}, "step_delay_ms"),
        ({"paused": "maybe"}, "paused"),
        # The schema says boolean: numbers and strings DRF would read as one are refused.
        ({"step_guards": 0}, "step_guards"),
        ({"paused": 1}, "paused"),
        ({"step_mode": "true"}, "step_mode"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_values_are_a_400_with_field_errors_and_change_nothing(staff_api, data, field):
    response = patch(staff_api, data)
    assert response.status_code == 400
    assert field in response.json()
    assert SandboxSettings.load().as_dict() == sandbox.DEFAULTS
    assert not SandboxChange.objects.exists()


def test_anonymous_users_cannot_read_or_change_the_sandbox(api):
    assert api.get("/api/sandbox/").status_code in (401, 403)
    assert patch(api, {"paused": True}).status_code in (401, 403)
    assert SandboxSettings.load().paused is False


def test_with_the_sandbox_disabled_the_controls_are_gone(staff_api, settings, product):
    settings.ORDERPIPE_SANDBOX = False
    assert staff_api.get("/api/sandbox/").status_code == 404
    order = services.order_create(customer_email="a@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    assert staff_api.post(f"/api/orders/{order.pk}/next-step/").status_code == 404


def test_next_step_records_a_grant_and_an_event(staff_api, product):
    order = services.order_create(customer_email="a@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    response = staff_api.post(f"/api/orders/{order.pk}/next-step/")
    assert response.status_code == 202
    assert StepGrant.objects.filter(order=order, used_at__isnull=True).count() == 1
    assert OrderEvent.objects.filter(order=order, kind=EventKind.CONTROL).exists()
    assert sandbox.step_grant_take(order_id=order.pk) is True
    assert sandbox.step_grant_take(order_id=order.pk) is False
    assert staff_api.post("/api/orders/00000000-0000-0000-0000-000000000000/next-step/").status_code == 404


def test_the_sandbox_command_shows_sets_and_resets(capsys):
    call_command("sandbox", "set", "step_delay_ms=100", "paused=true", "crash_rate=0.5")
    shown = json.loads(capsys.readouterr().out)
    assert (shown["step_delay_ms"], shown["paused"], shown["crash_rate"]) == (100, True, 0.5)
    assert SandboxChange.objects.filter(via="command").count() == 3
    call_command("sandbox", "reset")
    assert SandboxSettings.load().as_dict() == sandbox.DEFAULTS
    with pytest.raises(CommandError, match="crash_rate"):
        call_command("sandbox", "set", "crash_rate=2")
    with pytest.raises(CommandError, match="not a valid"):
        call_command("sandbox", "set", "step_delay_ms=soon")
    with pytest.raises(CommandError):
        call_command("sandbox", "set", "nope=1")


def test_workers_see_a_change_within_the_reader_ttl():
    reader = sandbox.SandboxReader(ttl=0.0)
    assert reader.get()["paused"] is False
    sandbox.sandbox_update(changes={"paused": True}, via="test")
    assert reader.get()["paused"] is True


@pytest.mark.django_db(transaction=True)
def test_every_change_is_a_control_action_in_the_live_feed_once_committed(staff_api):
    from orders import live

    patch(staff_api, {"crash_rate": 1, "step_mode": True, "worker_concurrency": 4})
    patch(staff_api, {"crash_rate": 1})  # no change: nothing recorded
    actions = live.recent_controls()
    assert [(a["action"], a["by"]) for a in actions] == [("sandbox", "staff")]
    assert actions[0]["detail"] == "crash_rate 0 → 1, step_mode false → true, worker_concurrency default → 4 (via api)"


def test_next_step_says_which_step_it_released(staff_api, product):
    from orders.events import record_event

    order = services.order_create(customer_email="a@example.com", items=[{"sku": "BOOK-001", "quantity": 1}])
    staff_api.post(f"/api/orders/{order.pk}/next-step/")
    # The worker's announcement, as worker/processing.py words it.
    record_event(
        order,
        EventKind.STEP_WAITING,
        "Step-by-step mode: waiting for 'Next step' before 'charge payment'. The message is unacked meanwhile.",
    )
    staff_api.post(f"/api/orders/{order.pk}/next-step/")
    presses = list(OrderEvent.objects.filter(order=order, kind=EventKind.CONTROL).values_list("message", flat=True))
    assert presses == [
        "'Next step' pressed by staff: releases the worker's next step when it gets there.",
        "'Next step' pressed by staff: releases 'charge payment'.",
    ]
