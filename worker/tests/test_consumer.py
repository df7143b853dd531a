from __future__ import annotations

import json
import threading

import pytest
import redis
from django.db import IntegrityError

from orders.models import (
    EventKind,
    Notification,
    Order,
    OrderEvent,
    OrderStatus,
    OrderStep,
    OutboxMessage,
    Payment,
    Product,
)
from orders.steps import STEPS
from worker.consumer import Worker
from worker.models import WorkerHeartbeat
from worker.relay import relay_once
from worker.tests.processes import wait_until


@pytest.fixture
def running_worker(broker):
    worker = Worker(prefetch=5, concurrency=2, name="test-worker")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(20)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_it_consumes_processes_and_acks(broker, place_order, running_worker):
    orders = [place_order() for _ in range(3)]
    relay_once(broker)
    assert wait_until(lambda: Order.objects.filter(status=OrderStatus.COMPLETED).count() == 3)
    assert Payment.objects.filter(order__in=orders).count() == 3
    # Acked: nothing ready, nothing held.
    assert wait_until(lambda: running_worker.processed == 3)
    assert not running_worker.in_flight
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(name="test-worker", processed=3).exists(), 5)


@pytest.mark.django_db(transaction=True)
def test_each_step_snapshots_the_rows_it_wrote_as_it_left_them(broker, place_order, running_worker):
    first, second = place_order(quantity=2), place_order(quantity=3)
    relay_once(broker)
    assert wait_until(lambda: Order.objects.filter(status=OrderStatus.COMPLETED).count() == 2)

    def rows_at(order, kind):
        event = OrderEvent.objects.filter(order=order, kind=kind).get()
        return [(row["table"], row["id"], row["fields"]) for row in event.snapshot["db"]["rows"]]

    product = Product.objects.get(sku="BOOK-001")
    assert product.stock == 10 - 2 - 3
    # Each order's reservation shows the stock its own decrement left, not today's stock: whichever ran second
    # saw the other's decrement.
    seen = {order.pk: rows_at(order, EventKind.INVENTORY_RESERVED) for order in (first, second)}
    stocks = sorted(fields["stock"] for rows in seen.values() for (_table, _id, fields) in rows)
    assert stocks in ([5, 8], [5, 7])
    assert all(rows == [("orders_product", str(product.pk), rows[0][2])] for rows in seen.values())

    for order in (first, second):
        outbox = OutboxMessage.objects.get(order=order)
        [(table, pk, accepted)] = rows_at(order, EventKind.ACCEPTED)
        assert (table, pk, accepted["sent_at"], accepted["publish_attempts"]) == (
            "orders_outboxmessage",
            str(outbox.pk),
            None,
            0,
        )
        [(_table, _pk, published)] = rows_at(order, EventKind.PUBLISHED)
        assert published["sent_at"] == outbox.sent_at.isoformat() and published["publish_attempts"] == 1
        payment = Payment.objects.get(order=order)
        assert rows_at(order, EventKind.PAYMENT_CHARGED) == [
            (
                "orders_payment",
                str(payment.pk),
                {
                    "amount": str(payment.amount),
                    "gateway_reference": payment.gateway_reference,
                    "created_at": payment.created_at.isoformat(),
                },
            )
        ]
        notification = Notification.objects.get(order=order)
        [(table, pk, sent)] = rows_at(order, EventKind.CUSTOMER_NOTIFIED)
        assert (table, pk, sent["recipient"], sent["subject"]) == (
            "orders_notification",
            str(notification.pk),
            notification.recipient,
            notification.subject,
        )
        assert rows_at(order, EventKind.RECEIVED) == [] and rows_at(order, EventKind.COMPLETED) == []


@pytest.mark.django_db(transaction=True)
def test_a_poison_message_goes_to_the_dead_letter_queue_and_the_worker_carries_on(broker, place_order, running_worker):
    topo = broker.topology
    broker.publish(
        exchange=topo.exchange,
        routing_key="order.placed",
        body={"order_id": "00000000-0000-0000-0000-000000000000", "version": 1},
        message_id="poison-1",
        message_type="order.placed",
    )
    order = place_order()
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED)

    def dead_message():
        method, props, body = broker.channel.basic_get(topo.dead_queue, auto_ack=True)
        return (props, body) if method else None

    found = []
    assert wait_until(lambda: found.append(dead_message()) or found[-1] is not None, 10)
    props, body = found[-1]
    assert props.message_id == "poison-1"
    assert props.headers["x-orderpipe-reason"] == "poison message: unknown order 00000000-0000-0000-0000-000000000000"
    assert json.loads(body)["order_id"] == "00000000-0000-0000-0000-000000000000"


@pytest.mark.django_db(transaction=True)
def test_stop_finishes_and_returns(broker):
    worker = Worker(prefetch=1, name="stopper")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    # Stopped once it is up (its first heartbeat), not while it is still connecting.
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(name="stopper").exists())
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert not WorkerHeartbeat.objects.filter(name="stopper").exists()


def _raising_in_a_step(worker: Worker, bad: set[str], exc: Exception) -> None:
    """Make the worker's second step (the charge) raise `exc` for the orders in `bad` (a bug, as far as the consumer
    knows)."""
    pipeline = worker.processor.pipeline
    run_step = pipeline.run_step

    def broken(step, items, **options):
        if step is STEPS[1] and any(str(item.order_id) in bad for item in items):
            raise exc
        return run_step(step, items, **options)

    pipeline.run_step = broken  # type: ignore[method-assign]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError('duplicate key value violates unique constraint "injected"'),
        KeyError("missing"),
        redis.exceptions.ConnectionError("Redis went away mid-step"),
    ],
    ids=["IntegrityError", "KeyError", "RedisError"],
)
def test_a_step_that_raises_settles_its_message_and_the_worker_carries_on(
    broker, place_order, running_worker, exc, caplog
):
    topo = broker.topology
    bad = place_order()
    _raising_in_a_step(running_worker, {str(bad.pk)}, exc)
    relay_once(broker)

    # Nacked back to the queue until the quorum queue's delivery limit parks it; the dead-letter watch marks it.
    assert wait_until(lambda: Order.objects.get(pk=bad.pk).status == OrderStatus.DEAD_LETTERED, 30)
    bad.refresh_from_db()
    assert bad.failure_reason.startswith("delivery limit reached")
    assert bad.step == OrderStep.INVENTORY_RESERVED  # the finished step stays; a replay resumes after it
    # The journey's last step names where the message is: parked in the dead-letter queue, with the broker's reason;
    # and every delivery before it (the returns too) knew the depth of its queue.
    events = list(OrderEvent.objects.filter(order=bad).order_by("seq"))
    dead = events[-1].snapshot["queue"]
    assert dead["queue"] == topo.dead_queue and dead["watched_via"] == topo.dead_watch_queue
    assert dead["headers"]["x-first-death-reason"] == "delivery_limit"
    assert dead["from_queue"] == topo.process_queue and dead["delivery_limit"] == topo.delivery_limit
    returns = [e for e in events if e.kind in (EventKind.RECEIVED, EventKind.REDELIVERED)]
    assert len(returns) > 1 and all(isinstance(e.snapshot["queue"]["queue_ready"], int) for e in returns)
    assert not Payment.objects.filter(order=bad).exists()

    def ready(queue: str) -> int:
        return broker.channel.queue_declare(queue, passive=True).method.message_count

    # Settled: nothing held by the worker, nothing ready, the message parked once in the dead letters.
    assert wait_until(lambda: not running_worker.in_flight and ready(topo.dead_queue) == 1, 10)
    assert ready(topo.process_queue) == 0
    logged = [r for r in caplog.records if r.levelname == "ERROR" and str(bad.pk) in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # with the order id and the traceback

    # The worker keeps consuming: a following good order completes.
    good = place_order()
    relay_once(broker)
    assert wait_until(lambda: Order.objects.get(pk=good.pk).status == OrderStatus.COMPLETED, 20)
    assert wait_until(lambda: not running_worker.in_flight, 5)


@pytest.mark.django_db(transaction=True)
def test_a_batch_with_failing_orders_commits_the_others_and_settles_each_message(broker, start_worker):
    """Six fresh deliveries taken as one batch: one order out of stock, one declined by the gateway. The other four
    complete in the batch's transactions, and every message is settled: nothing left unacked, one charge each."""
    from dataclasses import replace

    from orders import gateway, services
    from orders.failures import PaymentDeclined
    from orders.models import GatewayCharge
    from orders.tests.factories import ProductFactory

    ProductFactory(sku="BOOK-001", price="25.00", stock=100)
    ProductFactory(sku="MUG-002", price="9.00", stock=1)
    orders = [
        services.order_create(customer_email=f"b{n}@example.com", items=[{"sku": sku, "quantity": 1}])
        for n, sku in enumerate(["BOOK-001", "MUG-002", "MUG-002", "BOOK-001", "BOOK-001", "BOOK-001"])
    ]
    out_of_stock, declined = orders[2], orders[4]

    def charge(order, faults):
        if order.pk == declined.pk:
            raise PaymentDeclined("payment declined by the (simulated) card issuer")
        return gateway.charge(order, faults)

    worker = start_worker(prefetch=10, concurrency=1)
    worker.processor.pipeline.seams = replace(worker.processor.pipeline.seams, charge=charge)
    # The only step thread is kept busy until every delivery is in hand, so the six are taken as one batch.
    release = threading.Event()
    worker.executor.submit(release.wait, 20)
    relay_once(broker)
    assert wait_until(lambda: len(worker.pending) == len(orders), 10)
    # Held as a batch, they are in the heartbeat's `holding` as held one by one (the sweeper leaves them alone).
    held = sorted(str(order.pk) for order in orders)
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(name=worker.name, holding=held, unacked=6).exists(), 5)
    release.set()

    assert wait_until(lambda: Order.objects.filter(status__in=OrderStatus.terminal()).count() == len(orders), 20)
    statuses = [Order.objects.get(pk=order.pk).status for order in orders]
    assert statuses == [
        OrderStatus.FAILED if order in (out_of_stock, declined) else OrderStatus.COMPLETED for order in orders
    ]
    assert Order.objects.get(pk=out_of_stock.pk).failure_reason == "out of stock: MUG-002 (wanted 1)"
    assert Order.objects.get(pk=declined.pk).failure_reason.startswith("payment declined")
    # One transaction per step for the batch: the four that completed share each step's event time.
    assert OrderEvent.objects.filter(kind=EventKind.COMPLETED).values("at").distinct().count() == 1
    assert OrderEvent.objects.filter(kind=EventKind.RECEIVED).values("at").distinct().count() == 1
    # One charge each, stock taken by the completed ones only (the declined one's reservation released).
    assert Payment.objects.count() == 4 and GatewayCharge.objects.count() == 4
    assert dict(Product.objects.values_list("sku", "stock")) == {"BOOK-001": 100 - 3, "MUG-002": 0}

    # Every message settled (acked: a failed order is done with), nothing held, nothing back in a queue.
    assert wait_until(lambda: worker.processed == len(orders) and not worker.in_flight, 10)
    assert not worker.unsettled and not len(worker.in_hand) and not worker.pending
    worker.stop()
    assert wait_until(lambda: worker.connection is None, 20)

    def ready(queue: str) -> int:
        return broker.channel.queue_declare(queue, passive=True).method.message_count

    topo = broker.topology
    assert [ready(topo.process_queue), ready(topo.dead_queue)] == [0, 0]
    assert all(ready(tier.queue) == 0 for tier in topo.retry_tiers)


class RecordingChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


@pytest.mark.parametrize(
    ("acked", "expected"),
    [
        ([1, 2, 3], [(3, True)]),  # the lowest unsettled: one multiple ack
        ([2, 3], [(2, False), (3, False)]),  # 1 is still held by another thread: a multiple ack would settle it
        ([1, 2, 4], [(2, True), (4, False)]),  # 3 is still held: the run below it, then the rest one by one
        ([5], [(5, False)]),
    ],
)
def test_a_batch_is_acked_with_multiple_only_below_every_other_unsettled_delivery(acked, expected):
    worker = Worker(name="acks")
    worker.channel = channel = RecordingChannel()  # type: ignore[assignment]
    worker.unsettled = {1, 2, 3, 4, 5}
    worker._ack_all(channel, acked)  # type: ignore[arg-type]
    assert channel.acks == expected
    assert worker.unsettled == {1, 2, 3, 4, 5} - set(acked)
