"""Retries through the delay tiers, dead letters and replay, step-by-step mode and pause, on real RabbitMQ."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from orders import sandbox
from orders.models import EventKind, Order, OrderEvent, OrderStatus, OrderStep, Payment, Product, StepGrant
from orders.sandbox.faults import Faults, NoFaults, TransientFailure
from worker.models import WorkerHeartbeat
from worker.processing import REASON_HEADER, RETRIES_HEADER
from worker.relay import relay_once
from worker.replay import replay_dead_letters
from worker.tests.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class FlakyPayments(NoFaults):
    """The payment gateway times out the first `failures` times it is called, then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def maybe_fail_transiently(self, step: str) -> None:
        if step == "charge payment":
            self.calls += 1
            if self.calls <= self.failures:
                raise TransientFailure(f"simulated gateway timeout #{self.calls}")


def status_of(order) -> str:
    return Order.objects.get(pk=order.pk).status


def kinds(order) -> list[str]:
    return list(OrderEvent.objects.filter(order=order).order_by("seq").values_list("kind", flat=True))


def test_transient_failures_are_retried_through_the_delay_tiers_then_complete(broker, place_order, start_worker):
    start_worker(FlakyPayments(failures=2))
    order = place_order(quantity=2)
    relay_once(broker)
    assert wait_until(lambda: status_of(order) == OrderStatus.COMPLETED)
    journey = kinds(order)
    assert journey.count("retry_scheduled") == 2
    assert journey[-1] == "completed"
    retries = OrderEvent.objects.filter(order=order, kind=EventKind.RETRY_SCHEDULED).order_by("seq")
    tiers = broker.topology.retry_tiers
    assert [tiers[0].queue in e.message for e in retries] == [True, False]
    assert tiers[1].queue in retries[1].message
    assert Payment.objects.filter(order=order).count() == 1
    # Inventory was reserved once, before the first timeout, and never again.
    assert Product.objects.get(sku="BOOK-001").stock == 8


def test_an_order_that_keeps_failing_is_dead_lettered_then_replayed(broker, place_order, start_worker):
    tiers = len(broker.topology.retry_tiers)
    faults = FlakyPayments(failures=tiers + 1)
    start_worker(faults)
    order = place_order(quantity=1)
    relay_once(broker)
    assert wait_until(lambda: status_of(order) == OrderStatus.DEAD_LETTERED, 30)
    order.refresh_from_db()
    assert order.failure_reason.startswith(f"gave up after {tiers} retries")
    assert order.step == OrderStep.INVENTORY_RESERVED
    assert not Payment.objects.filter(order=order).exists()

    def parked():
        return broker.channel.queue_declare(broker.topology.dead_queue, passive=True).method.message_count

    assert wait_until(lambda: parked() == 1, 10)
    method, props, _body = broker.channel.basic_get(broker.topology.dead_queue, auto_ack=False)
    assert props.headers[REASON_HEADER].startswith("gave up after")
    broker.channel.basic_nack(method.delivery_tag, requeue=True)

    # The fault is gone (the flaky gateway has used up its failures): replay.
    assert replay_dead_letters(order.pk, via="test") == 1
    assert parked() == 0
    relay_once(broker)
    assert wait_until(lambda: status_of(order) == OrderStatus.COMPLETED)
    assert "replayed" in kinds(order)
    assert Payment.objects.filter(order=order).count() == 1
    assert Product.objects.get(sku="BOOK-001").stock == 9


@pytest.mark.parametrize("backoff", ["jitter", "fixed"])
def test_the_journey_names_the_delay_queue_at_each_retry_and_the_dead_letter_queue_at_the_end(
    broker, place_order, start_worker, backoff
):
    # A real retry: the sandbox's transient failure rate at 1, so every attempt at the first step times out and the
    # order goes through each delay tier (200/400/800 ms in tests) and is then dead-lettered by the worker. With
    # jitter each retry waits in one of its tier's lanes; on fixed delays in the tier's own queue.
    sandbox.sandbox_update(changes={"transient_failure_rate": 1, "retry_backoff": backoff}, via="test")
    start_worker(Faults(reader=sandbox.SandboxReader(ttl=0)))
    order = place_order()
    relay_once(broker)
    assert wait_until(lambda: status_of(order) == OrderStatus.DEAD_LETTERED, 30)
    topo = broker.topology
    tiers = topo.retry_tiers
    events = list(OrderEvent.objects.filter(order=order).order_by("seq"))
    worker_events = [e for e in events if e.kind not in (EventKind.ACCEPTED, EventKind.PUBLISHED)]
    # The depth of the queue named is known at every step the worker records, the first delivery included.
    assert all(isinstance(e.snapshot["queue"]["queue_ready"], int) for e in worker_events)

    scheduled = [e for e in events if e.kind == EventKind.RETRY_SCHEDULED]
    assert len(scheduled) == len(tiers)
    for number, (event, tier) in enumerate(zip(scheduled, tiers, strict=True), start=1):
        queue = event.snapshot["queue"]
        lane = tier if backoff == "fixed" else next(lane for lane in tier.lanes if lane.queue == queue["queue"])
        assert f"Retry {number} of {len(tiers)}" in event.message and lane.queue in event.message
        assert queue["queue"] == lane.queue and queue["routing_key"] == lane.queue and queue["exchange"] == ""
        assert queue["from_queue"] == topo.process_queue
        assert queue["ttl_ms"] == lane.delay_ms and tier.delay_ms / 2 <= lane.delay_ms <= tier.delay_ms * 1.5
        assert queue["retries"] == number  # the header the copy in the delay queue carries, as the text says
        back_in = datetime.fromisoformat(queue["back_at"]) - event.at
        assert timedelta(0) < back_in <= timedelta(milliseconds=lane.delay_ms)

    received_back = [e for e in events if e.kind == EventKind.RECEIVED and e.snapshot["queue"].get("retries")]
    assert [e.snapshot["queue"]["retries"] for e in received_back] == list(range(1, len(tiers) + 1))
    assert all(e.snapshot["queue"]["queue"] == topo.process_queue for e in received_back)
    assert all(f"Retry {n} received back" in e.message for n, e in enumerate(received_back, start=1))

    dead = events[-1]
    assert dead.kind == EventKind.DEAD_LETTERED
    queue = dead.snapshot["queue"]
    assert queue["queue"] == topo.dead_queue and queue["exchange"] == topo.dead_letter_exchange
    assert queue["headers"][REASON_HEADER] == order_reason(order) and queue["retries"] == len(tiers)
    assert order_reason(order).startswith(f"gave up after {len(tiers)} retries")

    # What the snapshot says is what the broker holds: the parked copy has that reason and retry count.
    assert wait_until(lambda: broker.channel.queue_declare(topo.dead_queue, passive=True).method.message_count, 10)
    method, props, _body = broker.channel.basic_get(topo.dead_queue, auto_ack=False)
    assert props.headers[REASON_HEADER] == queue["headers"][REASON_HEADER]
    assert props.headers[RETRIES_HEADER] == len(tiers)
    broker.channel.basic_nack(method.delivery_tag, requeue=True)


def order_reason(order) -> str:
    return Order.objects.get(pk=order.pk).failure_reason


def test_step_mode_waits_for_next_step_before_each_step(broker, place_order, start_worker):
    sandbox.sandbox_update(changes={"step_mode": True}, via="test")
    sandbox.reader.invalidate()
    start_worker(Faults())
    order = place_order()
    relay_once(broker)
    # The worker records `step_waiting` only after it looked for a press and found none, and then runs nothing
    # until one comes: so each new `step_waiting` marks the worker stopped, and the step it stopped after.
    assert wait_until(lambda: kinds(order).count("step_waiting") == 1)
    assert Order.objects.get(pk=order.pk).step == OrderStep.NONE
    expected = [OrderStep.INVENTORY_RESERVED, OrderStep.PAYMENT_CHARGED, OrderStep.CUSTOMER_NOTIFIED]
    for presses, step in enumerate(expected, start=1):
        sandbox.step_grant(order_id=order.pk)
        assert wait_until(lambda n=presses + 1: kinds(order).count("step_waiting") == n)
        assert Order.objects.get(pk=order.pk).step == step  # one press, one step
        assert not StepGrant.objects.filter(order=order, used_at__isnull=True).exists()
    sandbox.step_grant(order_id=order.pk)
    assert wait_until(lambda: status_of(order) == OrderStatus.COMPLETED)
    assert kinds(order).count("step_waiting") == 4


def test_pause_stops_consumption_until_resumed(broker, place_order, start_worker):
    sandbox.sandbox_update(changes={"paused": True}, via="test")
    sandbox.reader.invalidate()
    worker = start_worker(Faults())
    order = place_order()
    relay_once(broker)
    # The first heartbeat comes after the worker connected and applied the pause (Worker._connect): from then on a
    # paused worker has no consumer on the queue, so the message cannot reach it whatever the timing.
    assert wait_until(lambda: WorkerHeartbeat.objects.filter(pk=worker.name).exists())
    queue = broker.channel.queue_declare(broker.topology.process_queue, passive=True).method
    assert (queue.consumer_count, queue.message_count) == (0, 1)
    assert status_of(order) == OrderStatus.QUEUED
    sandbox.sandbox_update(changes={"paused": False}, via="test")
    assert wait_until(lambda: status_of(order) == OrderStatus.COMPLETED)
