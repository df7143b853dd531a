from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection

from orders.models import Order, OrderEvent, OutboxMessage
from worker.broker import Publisher, connect
from worker.relay import OutboxListener, relay_once, run_relay
from worker.tests.processes import wait_until
from worker.topology import Topology


def get_one(publisher: Publisher, queue: str):
    method, props, body = publisher.channel.basic_get(queue, auto_ack=True)
    return method, props, body


@pytest.mark.django_db
def test_it_publishes_pending_rows_with_confirms_and_marks_them_sent(broker, place_order):
    order = place_order()
    assert relay_once(broker) == 1
    outbox = OutboxMessage.objects.get(order=order)
    assert outbox.sent_at is not None and outbox.publish_attempts == 1
    order.refresh_from_db()
    assert order.status == "queued"
    event = OrderEvent.objects.get(order=order, kind="published")
    assert event.seq == 2
    assert event.snapshot["queue"]["exchange"] == broker.topology.exchange
    assert event.snapshot["cache"]["value"]["status"] == "queued"

    method, props, body = get_one(broker, broker.topology.process_queue)
    assert method is not None
    assert json.loads(body) == outbox.payload
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == str(outbox.id)
    assert props.type == "order.placed"
    assert relay_once(broker) == 0


@pytest.mark.django_db
def test_it_publishes_in_batches(broker, place_order):
    for _ in range(5):
        place_order()
    assert relay_once(broker, batch_size=2) == 2
    assert OutboxMessage.objects.filter(sent_at__isnull=True).count() == 3
    assert relay_once(broker, batch_size=10) == 3
    assert Order.objects.filter(status="queued").count() == 5


@pytest.mark.django_db
def test_an_unroutable_message_stays_in_the_outbox_with_the_error(broker, place_order, settings):
    # An exchange with no queue bound: `mandatory` makes the broker return the message instead of dropping it.
    lonely = Topology(prefix=f"{settings.ORDERPIPE_PREFIX}-unbound", delivery_limit=5, retry_delays_ms=())
    broker.channel.exchange_declare(lonely.exchange, exchange_type="direct", durable=True)
    try:
        unrouted = Publisher(broker.connection, lonely)
        order = place_order()
        assert relay_once(unrouted) == 0
        outbox = OutboxMessage.objects.get(order=order)
        assert outbox.sent_at is None
        assert outbox.publish_attempts == 1
        assert "unroutable" in outbox.last_error
        order.refresh_from_db()
        assert order.status == "pending"
    finally:
        broker.channel.exchange_delete(lonely.exchange)


@pytest.mark.django_db(transaction=True)
def test_notify_wakes_the_listener(place_order):
    listener = OutboxListener()
    try:
        assert listener.wait(0.2) is False

        def place_from_another_thread() -> None:
            try:
                place_order()
            finally:
                connection.close()  # a thread's own connection is not closed for it

        threading.Timer(0.3, place_from_another_thread).start()
        started = time.monotonic()
        assert listener.wait(10) is True
        assert time.monotonic() - started < 10
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_the_relay_loop_publishes_a_new_order_without_waiting_for_the_poll(broker, place_order):
    stop = threading.Event()
    # A 60 s polling interval: only NOTIFY can make the order go out within the deadline below.
    relay = threading.Thread(target=run_relay, args=(stop.is_set,), kwargs={"poll_interval": 60}, daemon=True)
    relay.start()
    try:
        time.sleep(0.5)
        order = place_order()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Order.objects.get(pk=order.pk).status != "queued":
            time.sleep(0.02)
        assert Order.objects.get(pk=order.pk).status == "queued"
    finally:
        stop.set()
        relay.join(10)
    assert not relay.is_alive()


@pytest.mark.django_db(transaction=True)
def test_the_published_event_carries_the_main_queue_depth_the_relay_observed(broker, place_order):
    """The journey's RabbitMQ panel shows a queue depth at "published" too, not a dash: the relay loop passes the
    depth its queue monitor observed (on connect, then about once a second) into each published event."""
    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(stop.is_set,), kwargs={"poll_interval": 60}, daemon=True)
    relay.start()
    try:
        order = place_order()
        assert wait_until(lambda: OrderEvent.objects.filter(order=order, kind="published").exists(), timeout=15)
    finally:
        stop.set()
        relay.join(10)
    queue = OrderEvent.objects.get(order=order, kind="published").snapshot["queue"]
    assert queue["queue"] == broker.topology.process_queue
    assert isinstance(queue["queue_ready"], int) and queue["queue_ready"] >= 0


def test_topology_is_declared_idempotently(broker):
    conn = connect()
    try:
        broker.topology.declare(conn.channel())  # same arguments again: no PRECONDITION_FAILED
    finally:
        conn.close()
