"""Lesson 11's machinery: the retry tiers' jitter lanes (declared, picked at random, counted with their tier), and a
payment gateway that is down refusing calls until it is back, on real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace

import pytest
from django.conf import settings

from orders import gateway, sandbox
from orders.models import EventKind, GatewayCharge, Order, OrderEvent, OrderStatus
from orders.sandbox.faults import Faults, NoFaults
from worker.models import QueueStat
from worker.monitor import QueueMonitor
from worker.processing import Processor
from worker.relay import relay_once
from worker.tests.processes import wait_until
from worker.topology import JITTER_FACTORS, Topology


class Backoff(NoFaults):
    def __init__(self, backoff: str) -> None:
        super().__init__()
        self.backoff = backoff

    def modes(self) -> sandbox.Modes:
        return replace(sandbox.SAFE_MODES, retry_backoff=self.backoff)


TOPO = Topology(prefix="t", delivery_limit=5, retry_delays_ms=(1000, 5000))


@pytest.mark.pure
def test_each_tier_has_lanes_from_half_to_one_and_a_half_times_its_delay_its_own_queue_the_middle_one():
    first, second = TOPO.retry_tiers
    assert [lane.delay_ms for lane in first.lanes] == [500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500]
    assert [lane.delay_ms for lane in second.lanes][::5] == [2500, 5000, 7500]
    assert first.lanes[5].queue == first.queue == "t.orders.retry.1s"
    assert [lane.queue for lane in first.extra_lanes()][:2] == [
        "t.orders.retry.1s.lane.500ms",
        "t.orders.retry.1s.lane.600ms",
    ]
    # The dashboard draws the tiers only; cleaning up removes the lanes too.
    assert [name for name, role in TOPO.queues() if role == "retry"] == [first.queue, second.queue]
    assert set(TOPO.lanes_of()[second.queue]) <= set(TOPO.all_queues())
    assert len(TOPO.all_queues()) == len(TOPO.queues()) + 1 + 2 * (len(JITTER_FACTORS) - 1)


@pytest.mark.pure
def test_with_jitter_a_retry_waits_in_a_lane_picked_at_random_and_on_fixed_delays_in_the_tier():
    tier = TOPO.retry_tiers[0]
    jitter = Processor(faults=Backoff("jitter"), topo=TOPO, rng=random.Random(7))
    picked = Counter(jitter.delay_lane(tier).queue for _ in range(500))
    assert set(picked) == {lane.queue for lane in tier.lanes}
    assert min(picked.values()) > 20  # about 45 each: none left out, none favoured
    fixed = Processor(faults=Backoff("fixed"), topo=TOPO, rng=random.Random(7))
    assert {fixed.delay_lane(tier) for _ in range(50)} == {tier}


@pytest.mark.django_db
def test_the_lanes_are_declared_with_their_ttl_and_counted_with_their_tier(broker):
    # A topology of its own with long delays, so a message stays in its lane while it is counted.
    topo = Topology(prefix=f"{settings.ORDERPIPE_PREFIX}.lanes", delivery_limit=5, retry_delays_ms=(60_000,))
    channel = broker.channel
    topo.declare(channel)
    try:
        [tier] = topo.retry_tiers
        for lane in tier.extra_lanes():
            # Declaring again with the lane's arguments is accepted: the broker holds exactly these.
            channel.queue_declare(lane.queue, durable=True, arguments=topo.retry_queue_arguments(lane))
            assert topo.retry_queue_arguments(lane)["x-message-ttl"] == lane.delay_ms
        broker.publish_raw(
            exchange="", routing_key=tier.extra_lanes()[0].queue, body=b"{}", message_id="m1", message_type="t"
        )
        broker.publish_raw(exchange="", routing_key=tier.queue, body=b"{}", message_id="m2", message_type="t")
        monitor = QueueMonitor(broker.connection, topo)
        monitor.observe()
        assert (monitor.depth(tier.queue), monitor.depth(tier.extra_lanes()[0].queue)) == (1, 1)
        assert QueueStat.objects.get(name=tier.queue).ready == 2
        assert not QueueStat.objects.filter(name__in=topo.lanes_of()[tier.queue]).exists()
    finally:
        topo.delete(channel)
        QueueStat.objects.filter(name__startswith=topo.prefix).delete()


@pytest.mark.django_db(transaction=True)
def test_a_gateway_that_is_down_refuses_each_call_and_the_order_completes_once_it_is_back(
    broker, place_order, start_worker
):
    sandbox.sandbox_update(changes={"gateway_down_until": time.time() + 600}, via="test")
    start_worker(Faults(reader=sandbox.SandboxReader(ttl=0)))
    order = place_order()
    relay_once(broker)

    def refusals() -> list[OrderEvent]:
        return list(OrderEvent.objects.filter(order=order, kind=EventKind.RETRY_SCHEDULED).order_by("seq"))

    assert wait_until(lambda: bool(refusals()), 30)
    sandbox.sandbox_update(changes={"gateway_down_until": None}, via="test")
    assert wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.COMPLETED, 30)
    first = refusals()[0]
    assert gateway.DOWN in first.message
    # Jitter, the default: the retry waited in one of the first tier's lanes.
    tier = broker.topology.retry_tiers[0]
    assert first.snapshot["queue"]["queue"] in {lane.queue for lane in tier.lanes}
    assert GatewayCharge.objects.filter(order_ref=str(order.id)).count() == 1


@pytest.mark.django_db
def test_the_outage_is_a_fault_named_in_the_banner_and_the_gateway_is_back_at_its_end():
    faults = Faults(reader=sandbox.SandboxReader(ttl=0))
    until = time.time() + 60
    sandbox.sandbox_update(changes={"gateway_down_until": until}, via="test")
    assert faults.gateway_down() and not faults.batchable()
    assert sandbox.sandbox_state()["active_faults"] == [
        f"payment gateway down until {time.strftime('%H:%M:%S', time.gmtime(until))} UTC"
    ]
    # Past its end the gateway answers again; the deliveries still go one by one, as they did during the outage,
    # until the setting is cleared.
    ended = time.time() - 1
    sandbox.sandbox_update(changes={"gateway_down_until": ended}, via="test")
    assert not faults.gateway_down() and not faults.batchable()
    assert sandbox.sandbox_state()["active_faults"] == [
        f"payment gateway back since {time.strftime('%H:%M:%S', time.gmtime(ended))} UTC"
    ]
    sandbox.sandbox_update(changes={"gateway_down_until": None}, via="test")
    assert faults.batchable() and sandbox.sandbox_state()["active_faults"] == []


@pytest.mark.pure
def test_the_sweeper_gives_a_retry_its_longest_lane_before_it_calls_the_order_lost():
    from datetime import timedelta

    from worker.sweeper import Sweeper

    assert Sweeper().retry_grace == timedelta(milliseconds=1.5 * max(settings.RETRY_DELAYS_MS))
