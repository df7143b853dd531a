from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from orders import sandbox
from orders.models import EventKind, Order, OrderEvent, OrderStatus, OutboxMessage, Payment
from orders.tests.factories import OrderEventFactory, OutboxMessageFactory
from worker import sweeper as sweeper_module
from worker.models import WorkerHeartbeat
from worker.relay import relay_once, run_relay
from worker.sweeper import Sweeper, orders_resend_stale
from worker.tests.factories import WorkerHeartbeatFactory
from worker.tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

AFTER = 0.5  # seconds without progress before an order counts as stale in these tests
GRACE = timedelta(seconds=2)


def ready(broker, queue: str | None = None) -> int:
    return broker.channel.queue_declare(queue or broker.topology.process_queue, passive=True).method.message_count


def sweep_until(sweeper: Sweeper, broker, count: int) -> list:
    """Sweep until `count` orders were re-sent (they become stale once AFTER has passed)."""
    resent: list = []

    def one_round() -> bool:
        sweeper.observe(ready(broker))
        resent.extend(sweeper.sweep())
        return len(resent) >= count

    assert wait_until(one_round, 10)
    return resent


def assert_completed_once(orders: list[Order]) -> None:
    ids = [o.pk for o in orders]
    assert Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count() == len(ids)
    per_order = Payment.objects.filter(order_id__in=ids).values("order_id").annotate(n=Count("id"))
    assert sorted(row["n"] for row in per_order) == [1] * len(ids)
    for kind in (EventKind.INVENTORY_RESERVED, EventKind.PAYMENT_CHARGED, EventKind.COMPLETED):
        assert OrderEvent.objects.filter(order_id__in=ids, kind=kind).count() == len(ids), kind


def test_purged_orders_are_resent_and_complete_once(broker, place_order, start_worker):
    orders = [place_order() for _ in range(3)]
    assert relay_once(broker) == 3
    # The messages vanish before any worker sees them: the orders sit `queued`, their outbox rows sent.
    assert broker.channel.queue_purge(broker.topology.process_queue).method.message_count == 3

    resent = sweep_until(Sweeper(after=AFTER, every=0), broker, 3)
    assert sorted(resent) == sorted(o.pk for o in orders)
    assert relay_once(broker) == 3
    start_worker(concurrency=2)
    assert wait_until(lambda: Order.objects.filter(status=OrderStatus.COMPLETED).count() == 3, 30)

    assert_completed_once(orders)
    events = OrderEvent.objects.filter(order__in=orders, kind=EventKind.RESENT)
    assert events.count() == 3
    assert all(e.message.startswith("Re-sent: no message found after 0.5 s") for e in events)
    # Finished orders are never swept again.
    assert sweep_until(Sweeper(after=AFTER, every=0), broker, 0) == []


def test_the_relay_runs_the_sweeper(broker, place_order, start_worker, settings):
    settings.SWEEP_AFTER, settings.SWEEP_EVERY = AFTER, 0.2
    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(stop.is_set,), kwargs={"poll_interval": 0.2}, daemon=True)
    relay.start()
    try:
        orders = [place_order() for _ in range(2)]
        ids = [o.pk for o in orders]
        assert wait_until(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.QUEUED).count() == 2, 20)
        assert wait_until(lambda: ready(broker) == 2, 10)
        broker.channel.queue_purge(broker.topology.process_queue)
        # The relay finds them stale, re-sends them through the outbox and publishes the new rows itself.
        sent = OutboxMessage.objects.filter(order__in=ids, sent_at__isnull=False)
        assert wait_until(lambda: sent.count() == 4, 60), list(OrderEvent.objects.values_list("kind", "message"))
        start_worker(concurrency=2)
        assert wait_until(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.COMPLETED).count() == 2, 60)
    finally:
        stop.set()
        relay.join(20)
    assert not relay.is_alive()
    assert_completed_once(orders)
    assert OrderEvent.objects.filter(order__in=orders, kind=EventKind.RESENT).count() == 2


def test_a_resent_message_that_was_not_lost_is_harmless(broker, place_order, start_worker):
    order = place_order()
    relay_once(broker)
    assert ready(broker) == 1
    # Re-send the order while its message still waits in the queue (the database part alone cannot see the queue).
    assert wait_until(lambda: orders_resend_stale(after=timedelta(seconds=AFTER), retry_grace=GRACE) == [order.pk], 10)
    relay_once(broker)
    assert ready(broker) == 2
    worker = start_worker(concurrency=2)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 30)
    # Both copies are settled (acked), and the order was processed once.
    assert wait_until(lambda: worker.processed == 2, 10)
    assert ready(broker) == 0
    assert_completed_once([order])


def test_it_leaves_alone_what_is_in_a_workers_hands_a_retry_tier_the_outbox_or_the_queue(broker, place_order):
    held, retrying, unsent, stale = (place_order() for _ in range(4))
    relay_once(broker)
    broker.channel.queue_purge(broker.topology.process_queue)
    WorkerHeartbeatFactory(holding=[str(held.pk)], last_seen=timezone.now() + timedelta(hours=1))
    Order.objects.filter(pk=retrying.pk).update(status=OrderStatus.RETRYING)
    OrderEventFactory(order=retrying, kind=EventKind.RETRY_SCHEDULED)  # its latest event
    OutboxMessageFactory(order=unsent)

    sweeper = Sweeper(after=AFTER, every=0)
    sweeper.retry_grace = timedelta(hours=1)  # the retry tier's delay has not passed yet
    sweeper.observe(main_queue_ready=1)
    assert sweeper.sweep() == []  # a ready message might be any of them
    sweeper.observe(main_queue_ready=None)
    assert sweeper.sweep() == []  # queue depth unknown
    assert sweep_until(sweeper, broker, 1) == [stale.pk]
    assert not OrderEvent.objects.filter(order__in=[held, retrying, unsent], kind=EventKind.RESENT).exists()
    # Once the retry tier's delay has passed, the message should have come back: it is lost.
    OrderEvent.objects.filter(order=retrying).update(at=F("at") - timedelta(hours=2))
    assert sweep_until(sweeper, broker, 1) == [retrying.pk]


def test_it_waits_until_every_live_worker_has_reported_since_the_queue_was_seen_empty(broker, place_order):
    order = place_order()
    relay_once(broker)
    broker.channel.queue_purge(broker.topology.process_queue)
    OrderEvent.objects.filter(order=order).update(at=F("at") - timedelta(minutes=5))  # long stale
    # A live worker whose last report predates the observation may have taken the message just before it.
    worker = WorkerHeartbeatFactory()
    sweeper = Sweeper(after=AFTER, every=60)
    sweeper.observe(ready(broker))
    assert sweeper.sweep() == []
    assert sweeper.sweep() == []  # still waiting for that report
    WorkerHeartbeat.objects.filter(pk=worker.pk).update(last_seen=timezone.now())  # it reports: holding nothing
    assert sweeper.sweep() == [order.pk]


def test_two_sweepers_do_not_both_resend(place_order, broker, monkeypatch):
    orders = [place_order() for _ in range(5)]
    relay_once(broker)
    broker.channel.queue_purge(broker.topology.process_queue)
    after = timedelta(seconds=AFTER)
    OrderEvent.objects.filter(order__in=orders).update(at=F("at") - timedelta(minutes=5))  # long stale

    # An order locked by someone else (another sweeper mid-way) is skipped, not waited for.
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with transaction.atomic():
            Order.objects.select_for_update().get(pk=orders[0].pk)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    first = orders_resend_stale(after=after, retry_grace=GRACE)
    release.set()
    holder.join(10)
    assert sorted(first) == sorted(o.pk for o in orders[1:])

    # The race the re-check under the lock is for: this sweeper reads its candidates, then another sweeper re-sends
    # the same order and commits, then this one locks it. It must see the other's `resent` event and back off.
    real_stale = sweeper_module._stale
    calls: list[int] = []

    def candidates_then_race(*args):
        calls.append(1)
        if len(calls) > 1:
            return real_stale(*args)  # the re-check under the lock
        read_before_the_other = list(real_stale(*args).values_list("pk", flat=True))
        other = threading.Thread(
            target=lambda: (others.extend(orders_resend_stale(after=after, retry_grace=GRACE)), connection.close())
        )
        other.start()
        other.join(20)
        return Order.objects.filter(pk__in=read_before_the_other)

    others: list = []
    monkeypatch.setattr(sweeper_module, "_stale", candidates_then_race)
    assert orders_resend_stale(after=after, retry_grace=GRACE) == []
    assert others == [orders[0].pk]
    per_order = OutboxMessage.objects.filter(order__in=orders).values("order_id").annotate(n=Count("id"))
    assert sorted(row["n"] for row in per_order) == [2] * 5
    assert OrderEvent.objects.filter(order__in=orders, kind=EventKind.RESENT).count() == 5


def test_an_order_a_worker_holds_without_progress_is_not_resent(broker, place_order, start_worker):
    # Step-by-step mode: the worker takes the message and waits, unacked, for "Next step" on the journey page.
    sandbox.sandbox_update(changes={"step_mode": True}, via="test")
    order = place_order()
    relay_once(broker)
    worker = start_worker(concurrency=2)
    assert wait_until(lambda: OrderEvent.objects.filter(order=order, kind=EventKind.STEP_WAITING).exists(), 20)
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(name=worker.name, holding=[str(order.pk)]).exists(), 10)
    OrderEvent.objects.filter(order=order).update(at=F("at") - timedelta(minutes=5))  # no progress for long

    sweeper = Sweeper(after=AFTER, every=60)
    sweeper.observe(ready(broker))
    rounds: list[list] = []

    def round_ran() -> bool:
        rounds.append(sweeper.sweep())
        return sweeper.queue_empty_at is None  # the worker has reported since the queue was seen empty

    assert wait_until(round_ran, 10)
    assert rounds[-1] == []
    assert not OrderEvent.objects.filter(order=order, kind=EventKind.RESENT).exists()
    sandbox.sandbox_update(changes={"step_mode": False}, via="test")
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 20)
