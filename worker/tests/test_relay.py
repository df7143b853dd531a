from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection

from orders.models import Order, OrderEvent, OutboxMessage
from worker.broker import BROKER_ERRORS, Publisher, _ConfirmWindow, connect
from worker.proxy import Proxy
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


def _outcome(rows: list[OutboxMessage]) -> list[tuple[bool, int, str]]:
    """(sent, attempts, the error's kind) of each row."""
    kinds = {"unroutable": "unroutable", "the broker nacked": "nacked", "": ""}
    for row in rows:
        row.refresh_from_db()
    return [
        (
            row.sent_at is not None,
            row.publish_attempts,
            next(k for p, k in kinds.items() if row.last_error.startswith(p)),
        )
        for row in rows
    ]


@pytest.mark.django_db
def test_windowed_confirms_mark_the_same_rows_sent_as_one_confirm_at_a_time(broker, place_order, settings):
    """The same outbox (six rows: the second one unroutable, the fifth and sixth past a full queue's limit, so
    nacked) relayed with a confirm awaited per row (the reference), with windows of 4 (two windows) and of 100:
    every way marks exactly the confirmed rows sent and records an attempt and the error on each refused one."""
    full = Topology(prefix=f"{settings.ORDERPIPE_PREFIX}-window", delivery_limit=5, retry_delays_ms=())
    queue = f"{full.prefix}.capped"
    broker.channel.exchange_declare(full.exchange, exchange_type="direct", durable=True)
    # A classic queue that holds three messages and nacks (reject-publish) every publish past them, in order.
    broker.channel.queue_declare(queue, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    broker.channel.queue_bind(queue, full.exchange, routing_key="order.placed")
    publisher = Publisher(broker.connection, full)
    outcomes = {}
    try:
        for window in (1, 4, 100):
            settings.RELAY_CONFIRM_WINDOW = window
            broker.channel.queue_purge(queue)
            rows = [OutboxMessage.objects.get(order=place_order()) for _ in range(6)]
            OutboxMessage.objects.filter(pk=rows[1].pk).update(routing_key="nowhere")
            assert relay_once(publisher) == 3
            outcomes[window] = _outcome(rows)
            queued = [get_one(broker, queue)[1].message_id for _ in range(3)]
            assert queued == [str(rows[i].id) for i in (0, 2, 3)]
            assert get_one(broker, queue)[0] is None
            OutboxMessage.objects.filter(sent_at__isnull=True).delete()  # the next round's outbox is its own
    finally:
        broker.channel.queue_delete(queue)
        broker.channel.exchange_delete(full.exchange)
    sent, unroutable, nacked = (True, 1, ""), (False, 1, "unroutable"), (False, 1, "nacked")
    assert outcomes[1] == [sent, unroutable, sent, sent, nacked, nacked]
    assert outcomes[4] == outcomes[100] == outcomes[1]


@pytest.mark.django_db
def test_a_connection_lost_mid_window_leaves_every_unconfirmed_row_pending(broker, place_order, settings, monkeypatch):
    """Two windows of two rows; the relay's link to the broker is cut (a real reset, through a proxy) once the
    second window is published and before any of its confirms can arrive. The first window's rows stay sent, the
    second's stay pending with the attempt and the loss recorded, and the relay raises a broker error so that its
    loop reconnects."""
    settings.RELAY_CONFIRM_WINDOW = 2
    orders = [place_order() for _ in range(4)]
    rows = [OutboxMessage.objects.get(order=order) for order in orders]
    with Proxy(5672) as proxy:
        wait = _ConfirmWindow._wait

        def cut_before_the_second_windows_confirms(window: _ConfirmWindow, done, timeout: float) -> None:
            if window.messages and window.messages[0].message_id == str(rows[2].id):
                proxy.down()
            wait(window, done, timeout)

        monkeypatch.setattr(_ConfirmWindow, "_wait", cut_before_the_second_windows_confirms)
        publisher = Publisher(connect(f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"))
        with pytest.raises(BROKER_ERRORS):
            relay_once(publisher)
        publisher.close()
    monkeypatch.undo()
    assert _outcome(rows)[:2] == [(True, 1, ""), (True, 1, "")]
    for row in rows[2:]:
        assert (row.sent_at, row.publish_attempts) == (None, 1) and row.last_error
    assert [Order.objects.get(pk=o.pk).status for o in orders] == ["queued", "queued", "pending", "pending"]
    assert relay_once(broker) == 2


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
def test_the_relay_loop_publishes_a_new_order_without_waiting_for_the_poll(broker, place_order, monkeypatch):
    # The order is placed once the relay's listener has run LISTEN: a NOTIFY before that would be missed.
    listening = threading.Event()
    connect_listener = OutboxListener._connect

    def connect_and_say_so(listener: OutboxListener):
        conn = connect_listener(listener)
        listening.set()
        return conn

    monkeypatch.setattr(OutboxListener, "_connect", connect_and_say_so)
    stop = threading.Event()
    # A 60 s polling interval: only NOTIFY can make the order go out within the deadline below.
    relay = threading.Thread(target=run_relay, args=(stop.is_set,), kwargs={"poll_interval": 60}, daemon=True)
    relay.start()
    try:
        assert listening.wait(15)
        order = place_order()
        assert wait_until(lambda: Order.objects.get(pk=order.pk).status == "queued", 15)
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
