from __future__ import annotations

import json
import threading

import pytest

from orders.models import Order, OrderStatus, Payment, WorkerHeartbeat
from worker.consumer import Worker
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
