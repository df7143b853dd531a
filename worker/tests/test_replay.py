from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from orders.models import EventKind, Order, OrderEvent, OrderStatus, OutboxMessage
from orders.tests.factories import AdminFactory, StaffFactory
from worker.replay import replay_dead_letters

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_order(place_order):
    order = place_order()
    OutboxMessage.objects.filter(order=order).update(sent_at=timezone.now())
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.DEAD_LETTERED, failure_reason="gave up")
    return order


@pytest.fixture
def staff_api(api):
    api.force_authenticate(StaffFactory(username="ops"))
    return api


def test_replay_moves_the_order_back_through_the_outbox(broker, dead_order):
    assert replay_dead_letters(dead_order.pk, replayed_by="ops", via="test") == 1
    dead_order.refresh_from_db()
    assert dead_order.status == OrderStatus.QUEUED
    assert dead_order.failure_reason == ""
    assert OutboxMessage.objects.filter(order=dead_order, sent_at__isnull=True).count() == 1
    event = OrderEvent.objects.filter(order=dead_order).latest("seq")
    assert event.kind == EventKind.REPLAYED
    assert "by ops" in event.message
    assert replay_dead_letters(dead_order.pk, via="test") == 0  # only dead-lettered orders are replayed


def test_replay_tidies_the_parking_lot_but_keeps_poison(broker, dead_order, place_order):
    other = place_order()
    Order.objects.filter(pk=other.pk).update(status=OrderStatus.DEAD_LETTERED)
    topo = broker.topology
    for body in ({"order_id": str(dead_order.pk), "version": 1}, {"order_id": str(other.pk), "version": 1}, {"x": 1}):
        broker.publish(exchange=topo.dead_letter_exchange, routing_key="", body=body, message_id="m", message_type="t")
    assert replay_dead_letters(dead_order.pk, via="test") == 1
    remaining = []
    while True:
        method, _props, body = broker.channel.basic_get(topo.dead_queue, auto_ack=True)
        if method is None:
            break
        remaining.append(json.loads(body))
    assert {"order_id": str(dead_order.pk), "version": 1} not in remaining
    assert {"order_id": str(other.pk), "version": 1} in remaining
    assert {"x": 1} in remaining


def test_the_command_replays_one_or_all(broker, dead_order, place_order, capsys):
    with pytest.raises(CommandError):
        call_command("replay_dead_letters")
    with pytest.raises(CommandError, match="not dead_lettered"):
        call_command("replay_dead_letters", "--order", str(place_order().pk))
    with pytest.raises(CommandError, match="not an order id"):
        call_command("replay_dead_letters", "--order", "nope")
    call_command("replay_dead_letters", "--all")
    assert "replayed 1 order(s)" in capsys.readouterr().out
    assert Order.objects.get(pk=dead_order.pk).status == OrderStatus.QUEUED


def test_the_staff_api_replays_with_clear_errors(broker, dead_order, place_order, staff_api, api):
    url = "/api/dead-letters/replay/"
    alive = place_order()
    missing = "00000000-0000-0000-0000-000000000000"
    assert staff_api.post(url, {"order_id": missing}, format="json").status_code == 404
    assert staff_api.post(url, {"order_id": str(alive.pk)}, format="json").status_code == 409
    assert staff_api.post(url, {"order_id": "nope"}, format="json").status_code == 400
    response = staff_api.post(url, {"order_id": str(dead_order.pk)}, format="json")
    assert (response.status_code, response.json()) == (200, {"replayed": 1})


def test_anonymous_users_cannot_replay(dead_order):
    from rest_framework.test import APIClient

    assert APIClient().post("/api/dead-letters/replay/", {}, format="json").status_code in (401, 403)
    assert Order.objects.get(pk=dead_order.pk).status == OrderStatus.DEAD_LETTERED


def test_the_admin_action_replays_selected_orders(broker, dead_order, client):
    admin = AdminFactory(username="root", password="pw")
    client.force_login(admin)
    response = client.post(
        "/admin/orders/order/",
        {"action": "replay_selected", "_selected_action": [str(dead_order.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert Order.objects.get(pk=dead_order.pk).status == OrderStatus.QUEUED
