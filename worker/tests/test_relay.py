from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

import pytest
from django.db import connection

from orders.models import Order, OrderEvent, OutboxMessage
from orders.services import order_message, order_replay
from worker.broker import BROKER_ERRORS, Publisher, _ConfirmWindow, connect
from worker.proxy import Proxy
from worker.relay import OutboxListener, record_published, record_published_each, relay_once, run_relay
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


# What differs between two runs of the same orders and says nothing about the rows: times.
VARYING = {"at", "created_at", "updated_at", "sent_at", "placed_at"}


def _journeys(orders: list[Order]) -> dict[str, Any]:
    """Each order's status and version, its outbox rows, and its events, every id replaced by its position."""
    names: dict[str, str] = {}
    for n, order in enumerate(orders):
        names[str(order.pk)] = f"<order {n}>"
        names[order.customer_email] = f"<customer {n}>"
        for k, outbox_id in enumerate(OutboxMessage.objects.filter(order=order).order_by("id").values_list("id")):
            names[str(outbox_id[0])] = f"<outbox {n}.{k}>"

    def same(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("table") == OutboxMessage._meta.db_table:
                value = {**value, "id": names[value["id"]]}
            return {
                key: "<varies>"
                if key in VARYING
                else names[str(item)]
                if key in ("outbox_id", "message_id")
                else same(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [same(item) for item in value]
        if isinstance(value, str):
            value = re.sub(r"#(\d+)", lambda m: f"#{names[m.group(1)]}", value)
            value = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", lambda m: names[m.group(0)], value)  # in a cache key too
            return names.get(value, value)
        return value

    return same(
        [
            {
                "status": order.status,
                "version": order.version,
                "outbox": list(
                    OutboxMessage.objects.filter(order=order)
                    .order_by("id")
                    .values("sent_at", "publish_attempts", "last_error")
                ),
                "events": [
                    [event.seq, event.kind, event.message, event.snapshot]
                    for event in OrderEvent.objects.filter(order=order).order_by("seq")
                ],
            }
            for order in Order.objects.filter(pk__in=[o.pk for o in orders]).order_by("customer_email")
        ]
    )


def _mixed_outbox(broker: Publisher, place_order, run: str, record) -> list[Order]:
    """Six pending rows in one outbox: three orders' first messages, a dead-lettered order's replay (already
    `queued`) between them, and an order with two messages (the second finds it `queued`)."""
    replayed = place_order(email=f"{run}3@example.com")
    assert relay_once(broker, record=record) == 1
    Order.objects.filter(pk=replayed.pk).update(status="dead_lettered")
    first = place_order(email=f"{run}0@example.com")
    order_replay(order_id=replayed.pk, via="test")
    second = place_order(email=f"{run}1@example.com")
    twice = place_order(email=f"{run}4@example.com")
    OutboxMessage.objects.create(order=twice, payload=order_message(twice))
    third = place_order(email=f"{run}2@example.com")
    return [first, second, third, replayed, twice]


@pytest.mark.django_db
def test_the_batched_published_events_match_the_per_order_ones(broker, place_order):
    """The same outbox relayed with each order moved by its own statement and cached on its own (the reference),
    and with the batch's moves in one statement and its cache writes pipelined: the same statuses, outbox rows,
    events and snapshots (the cache part included)."""
    journeys = {}
    for run, record in (("each", record_published_each), ("batch", record_published)):
        orders = _mixed_outbox(broker, place_order, run, record)
        assert relay_once(broker, record=record) == 6
        journeys[run] = _journeys(orders)
    assert journeys["batch"] == journeys["each"]
    assert [journey["status"] for journey in journeys["batch"]] == ["queued"] * 5
    assert [len(journey["events"]) for journey in journeys["batch"]] == [2, 2, 2, 4, 3]


@pytest.mark.django_db
def test_a_batch_logs_one_summary_line_and_its_events_at_debug(
    broker, place_order, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    orders = [place_order() for _ in range(3)]
    caplog.clear()
    with django_capture_on_commit_callbacks(execute=True):  # the events are logged once their transaction commits
        assert relay_once(broker) == 3
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in info] == [
        f"relay: 3 message(s) published and confirmed, outbox #{min(ids)} to #{max(ids)}"
        for ids in [list(OutboxMessage.objects.filter(order__in=orders).values_list("id", flat=True))]
    ]
    events = [r for r in caplog.records if r.name == "orderpipe.events"]
    assert sorted(r.order_id for r in events) == sorted(str(order.pk) for order in orders)
    assert {(r.kind, r.levelno) for r in events} == {("published", logging.DEBUG)}


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
