"""The live producer's unit of work (`Producer.tick`) and its lock, called directly against PostgreSQL and Redis."""

from __future__ import annotations

import pytest

from orderpipe.dashboard import feed
from orderpipe.dashboard.broadcaster import Producer
from orders import live, services

pytestmark = pytest.mark.django_db


def place(product):
    return services.order_create(customer_email="b@example.com", items=[{"sku": product.sku, "quantity": 1}])


def test_only_one_producer_holds_the_lock():
    first, second = Producer(), Producer()
    assert first.acquire()
    assert not second.acquire()
    assert first.renew()
    assert not second.renew()
    first.release()
    assert second.acquire()
    assert not first.renew()  # a producer that lost the lock notices and stops producing
    second.release()


def test_a_tick_batches_new_events_and_sends_watched_orders_theirs(product):
    place(product)  # before the producer starts: not sent again
    producer = Producer()
    producer.tick()
    watched, unwatched = place(product), place(product)
    feed.watch_order(watched.pk)
    live.record_control("flush cache", "2 keys removed", by="ops")

    producer.last_state_at = 0  # as if the last pipeline picture were old: this tick recomputes it
    messages = dict(producer.tick())

    pipeline = messages.pop(feed.PIPELINE_GROUP)
    assert pipeline["type"] == "pipeline.update"
    assert pipeline["event_count"] == 2
    assert {e["order_id"] for e in pipeline["events"]} == {str(watched.pk), str(unwatched.pk)}
    assert [c["detail"] for c in pipeline["controls"]] == ["2 keys removed"]
    assert pipeline["state"]["pipeline"]["orders"]["by_status"]["pending"] == 3
    assert sum(accepted for _second, accepted, _completed in pipeline["rates"]) == 2
    # Only the open journey page's order gets its full events (with snapshots); nobody watches the other one.
    assert list(messages) == [feed.order_group(watched.pk)]
    [event] = messages[feed.order_group(watched.pk)]["events"]
    assert (event["kind"], set(event["snapshot"])) == ("accepted", {"db", "queue", "cache"})

    assert producer.tick() == []  # nothing new, and the state was sent less than a second ago
