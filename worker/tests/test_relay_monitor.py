"""The relay's heartbeat, written by a real relay loop (worker/relay_monitor.py), as the dashboard reads it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.utils import timezone

from orderpipe.dashboard.state import pipeline_state
from orders.tests.factories import ProductFactory
from worker.models import RelayHeartbeat
from worker.proxy import Proxy
from worker.relay import run_relay
from worker.relay_monitor import RelayMonitor
from worker.sweeper import Sweeper
from worker.tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def relay_thread(**kwargs) -> Iterator[threading.Thread]:
    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(stop.is_set,), kwargs={"poll_interval": 1, **kwargs}, daemon=True)
    relay.start()
    try:
        yield relay
    finally:
        stop.set()
        relay.join(20)
    assert not relay.is_alive()


def heartbeat() -> RelayHeartbeat | None:
    return RelayHeartbeat.objects.first()


def in_state(state: str) -> bool:
    row = heartbeat()
    return row is not None and row.state == state


def test_a_running_relay_reports_idle_then_publishing_with_a_rate_and_leaves_when_stopped(broker, place_order):
    ProductFactory(sku="BOOK-002", stock=100)
    with relay_thread():
        assert wait_until(lambda: in_state("idle")), heartbeat()
        for _ in range(30):
            place_order(sku="BOOK-002")
        assert wait_until(lambda: in_state("publishing")), heartbeat()
        assert wait_until(lambda: heartbeat().published == 30), heartbeat().published
        row = heartbeat()
        assert row.rate > 0 and row.last_publish_at is not None

        relay = pipeline_state()["relays"]
        assert [(r["alive"], r["published"]) for r in relay] == [(True, 30)]
        assert relay[0]["rate"] > 0 and relay[0]["last_publish_at"] is not None
        # With nothing left to publish it goes back to idle, and the rate falls to 0 once the window has passed.
        assert wait_until(lambda: in_state("idle") and heartbeat().rate == 0, 30), heartbeat()
    # A clean stop removes the row: the page shows no relay running.
    assert heartbeat() is None


def test_a_relay_that_loses_the_broker_reports_it_unreachable_until_it_reconnects(broker, place_order):
    with Proxy(5672) as rabbit, relay_thread(amqp_url=f"amqp://guest:guest@127.0.0.1:{rabbit.port}/%2F"):
        assert wait_until(lambda: in_state("idle")), heartbeat()
        rabbit.down()
        assert wait_until(lambda: in_state("unreachable")), heartbeat()
        assert "reconnecting in" in heartbeat().detail
        # It keeps beating while it backs off: still running, not gone.
        seen = heartbeat().last_seen
        assert wait_until(lambda: heartbeat().last_seen > seen and in_state("unreachable")), heartbeat()
        [state] = pipeline_state()["relays"]
        assert (state["alive"], state["state"]) == (True, "unreachable")

        order = place_order()
        rabbit.up()
        assert wait_until(lambda: heartbeat().published == 1, 30), heartbeat()
        assert wait_until(lambda: in_state("idle")), heartbeat()
        order.refresh_from_db()
        assert order.status == "queued"


def test_the_state_it_reports_broker_trouble_first_then_publishing_then_a_sweep_round():
    sweeper = Sweeper()
    monitor = RelayMonitor(sweeper)
    assert monitor.state() == ("idle", "")
    # A sweeper round under way: the main queue was seen empty, the relay waits for the workers to report.
    sweeper.queue_empty_at = timezone.now()
    assert monitor.state()[0] == "sweeping"
    monitor.published(3)
    assert monitor.state() == ("publishing", "")
    monitor.unreachable("ConnectionResetError; reconnecting in 0.5 s")
    assert RelayHeartbeat.objects.get().state == "unreachable"  # a change of state is written at once
    # The beat consumed "published since the last beat"; the broker is still out of reach until a round trip works.
    assert monitor.state() == ("unreachable", "ConnectionResetError; reconnecting in 0.5 s")
    monitor.published(0)
    assert monitor.state()[0] == "sweeping"
    monitor.stop()
    assert not RelayHeartbeat.objects.exists()
