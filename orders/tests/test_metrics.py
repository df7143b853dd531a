from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.db import transaction
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from orders import services
from orders.sandbox.faults import NoFaults
from worker.processing import ACK, Processor
from worker.tests.conftest import delivery_for
from worker.tests.factories import QueueStatFactory

# on_commit hooks only run when the test really commits.
pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.ORDERPIPE_METRICS_TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def place(quantity: int = 1):
    return services.order_create(customer_email="ada@example.com", items=[{"sku": "BOOK-001", "quantity": quantity}])


def test_processing_an_order_moves_the_counters_and_histograms(client, product):
    before = scrape(client)

    def seen(name: str, **labels: str) -> float:
        return before.get((name, tuple(sorted(labels.items()))), 0.0)

    order = place()
    assert Processor(faults=NoFaults()).process(delivery_for(order)) == ACK

    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.get((name, tuple(sorted(labels.items()))), 0.0) - seen(name, **labels)

    for kind in ("accepted", "received", "inventory_reserved", "payment_charged", "customer_notified", "completed"):
        assert moved("orderpipe_order_events_total", kind=kind) == 1, kind
        assert moved("orderpipe_order_step_duration_seconds_count", kind=kind) == 1, kind
    assert moved("orderpipe_order_events_total", kind="failed") == 0
    assert moved("orderpipe_order_end_to_end_duration_seconds_count") == 1
    assert moved("orderpipe_order_end_to_end_duration_seconds_sum") > 0
    # Every kind is exported from the start, so dashboards see a 0 rather than no data.
    assert ("orderpipe_order_events_total", (("kind", "dead_lettered"),)) in after
    assert ("orderpipe_order_events_total", (("kind", "retry_scheduled"),)) in after


def test_the_gauges_show_the_backlog_queues_and_cache(staff_api, product):
    client = staff_api  # reading the order over HTTP needs staff outside DEBUG
    place()
    place()
    QueueStatFactory(name="test.orders.process", ready=7, consumers=1)
    order = place()
    Processor(faults=NoFaults()).process(delivery_for(order))
    assert client.get(f"/api/orders/{order.id}/")["X-Cache"] == "HIT"

    metrics = scrape(client)
    # Nothing ran the relay: the three outbox rows are still waiting.
    assert metrics[("orderpipe_outbox_backlog", ())] == 3
    assert metrics[("orderpipe_queue_ready_messages", (("queue", "test.orders.process"), ("role", "main")))] == 7
    assert metrics[("orderpipe_cache_up", ())] == 1
    assert metrics[("orderpipe_cache_hits_total", ())] == 1
    assert metrics[("orderpipe_cache_misses_total", ())] == 0
    assert metrics[("orderpipe_cache_keys", ())] == 1


def test_a_rolled_back_transition_is_never_counted(product):
    accepted = sample("orderpipe_order_events_total", kind="accepted")
    with pytest.raises(RuntimeError), transaction.atomic():
        place()
        raise RuntimeError("rolled back after the event was recorded")
    assert sample("orderpipe_order_events_total", kind="accepted") == accepted
    place()
    assert sample("orderpipe_order_events_total", kind="accepted") == accepted + 1


def test_a_failed_order_counts_as_failed_not_completed(product):
    failed = sample("orderpipe_order_events_total", kind="failed")
    completed = sample("orderpipe_order_end_to_end_duration_seconds_count")
    order = place(quantity=50)  # more than the 10 in stock
    Processor(faults=NoFaults()).process(delivery_for(order))
    assert sample("orderpipe_order_events_total", kind="failed") == failed + 1
    assert sample("orderpipe_order_end_to_end_duration_seconds_count") == completed


def test_it_logs_one_line_per_event_with_its_duration(product, caplog):
    caplog.set_level(logging.INFO, logger="orderpipe.events")
    order = place()
    Processor(faults=NoFaults()).process(delivery_for(order))
    records = [r for r in caplog.records if r.name == "orderpipe.events"]
    assert [r.kind for r in records] == [
        "accepted",
        "received",
        "inventory_reserved",
        "payment_charged",
        "customer_notified",
        "completed",
    ]
    assert {r.order_id for r in records} == {str(order.id)}
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r.duration_ms >= 0 for r in records)
    assert records[-1].end_to_end_ms >= sum(r.duration_ms for r in records) - 1
    assert f"order {order.id} completed after" in records[-1].getMessage()
